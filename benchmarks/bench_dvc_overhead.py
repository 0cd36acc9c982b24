"""What DVC costs between two stages of `make run`, with ruamel.yaml's C parser (ruamel.yaml.clib, a project
dependency) and without it (pure Python, what DVC gets where the wheel is missing).

    python -m benchmarks.bench_dvc_overhead [--runs 5]

DVC reads YAML all the time: dvc.yaml, dvc.lock and params.yaml to collect the stages and check what changed, and
dvc.lock once more, round-trip, to rewrite it after every stage. The C parser serves its plain ("safe") reads; the
round-trip rewrite is pure Python either way. Two measurements, each in fresh processes taken in turns (pure, C,
pure, C, ...) so a busy spell hits both alike, printed as medians:

- `dvc status` in this project (nothing runs; what a no-op `dvc repro` costs);
- in a scratch copy of dvc.yaml, dvc.lock and params.yaml: collecting the stages, and rewriting dvc.lock after
  one stage as `dvc repro` does after each (the same bytes written back).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WITHOUT_C = "import sys; sys.modules['_ruamel_yaml'] = None  # ruamel.yaml falls back to its pure-Python parser\n"

STATUS = "import sys; from dvc.cli import main; sys.exit(main(['status', '-q']) not in (0, 1))\n"

LOCK = """
import json, sys, time
from dvc.repo import Repo
t0 = time.perf_counter()
repo = Repo(sys.argv[1])
stages = [s for s in repo.index.stages if s.is_data_source is False]
t1 = time.perf_counter()
stage = next(s for s in stages if s.addressing == sys.argv[2])
stage.dump(update_pipeline=False)  # what dvc repro does after a stage runs
t2 = time.perf_counter()
print(json.dumps({"collect": t1 - t0, "lock": t2 - t1}))
"""


def _timed(code: str, *args: str, cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - started


def _lock(code: str, scratch: Path, stage: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, str(scratch), stage], cwd=scratch, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stage", default="judge@math", help="the stage whose lock entry is rewritten")
    args = parser.parse_args()
    if importlib.util.find_spec("_ruamel_yaml") is None:
        raise SystemExit("ruamel.yaml.clib is not installed here: `make setup` installs it")

    variants = {"pure Python": WITHOUT_C, "C parser (ruamel.yaml.clib)": ""}
    rows: dict[str, dict[str, list[float]]] = {name: {"status": [], "collect": [], "lock": []} for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as tmp:
        scratch = Path(tmp)
        for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
            shutil.copyfile(ROOT / name, scratch / name)
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=scratch, check=True)
        before = (scratch / "dvc.lock").read_bytes()
        for _ in range(args.runs):
            for name, prefix in variants.items():
                rows[name]["status"].append(_timed(prefix + STATUS, cwd=ROOT))
                lock = _lock(prefix + LOCK, scratch, args.stage)
                rows[name]["collect"].append(lock["collect"])
                rows[name]["lock"].append(lock["lock"])
        same = (scratch / "dvc.lock").read_bytes() == before

    labels = {"status": "`dvc status` in the project, whole process",
              "collect": "collect the stages (dvc.yaml, dvc.lock, params.yaml)",
              "lock": f"rewrite dvc.lock after one stage ({args.stage})"}
    names = list(variants)
    size = (ROOT / "dvc.lock").stat().st_size
    print(f"DVC's YAML work, median of {args.runs} runs (seconds); dvc.lock {size / 1024:.0f} KiB\n")
    print("| step | " + " | ".join(names) + " | ratio |")
    print("|---|" + "---:|" * (len(names) + 1))
    for key, label in labels.items():
        a, b = (statistics.median(rows[n][key]) for n in names)
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    print(f"\ndvc.lock written back unchanged: {same}")


if __name__ == "__main__":
    main()
