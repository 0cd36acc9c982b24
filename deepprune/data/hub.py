"""Corpora from the Hugging Face hub, where the paper's released traces are published (the dataset
`THU-KEG/DeepPrune`) and where a team shares its own. A dataset at a pinned revision is exported once, where the
network allows, to a local Parquet file; a corpus then reads that file like any other (`format: parquet`, the
generic importer's field map), so DVC tracks a file and no stage ever needs the network.

    python -m deepprune.data.hub THU-KEG/DeepPrune --revision <commit> --out data/raw/traces/deepprune.parquet
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deepprune.data.schema import datasets_cache


class HubUnavailable(RuntimeError):
    """The hub could not serve the dataset (no network, offline mode, unknown id or revision)."""


def export(dataset: str, revision: str, out: str | os.PathLike, split: str = "train",
           config: str | None = None) -> tuple[int, list[str]]:
    """Write `dataset` (at `revision`, one `split`) to the Parquet file `out`, atomically. Returns its row count and
    column names (what a corpus's field map points at)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from datasets import load_dataset

    try:
        table = load_dataset(dataset, config, revision=revision, split=split, cache_dir=str(datasets_cache()))
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError, ... by cause
        offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        hint = ("HF_HUB_OFFLINE is set: unset it where the network allows" if offline else
                "export it on a machine that reaches huggingface.co and copy the Parquet file here")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HubUnavailable(f"cannot fetch {dataset}@{revision} (split {split}) from the Hugging Face hub: "
                             f"{reason}; {hint}, then point a corpus at the file (format: parquet)") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        table.to_parquet(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(table), list(table.column_names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepprune.data.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="hub dataset id, e.g. THU-KEG/DeepPrune")
    parser.add_argument("--revision", required=True, help="a commit (or tag) of the dataset: what you export is pinned")
    parser.add_argument("--split", default="train")
    parser.add_argument("--config", default=None, help="the dataset's configuration (subset), if it has several")
    parser.add_argument("--out", required=True, help="the Parquet file to write")
    args = parser.parse_args(argv)
    try:
        rows, columns = export(args.dataset, args.revision, args.out, args.split, args.config)
    except HubUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {rows} rows; columns: {', '.join(columns)}")
    print("add it to params.yaml `corpora` with importer: generic, format: parquet and a `fields` map over these "
          "columns (README, Bring your own traces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
