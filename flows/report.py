"""Flow of the report stage: figures and reports/index.html from every corpus's outputs; or, run by hand with
`--corpus a,b`, a report of those corpora alone in reports/corpora/a+b/ (a clone that added one corpus reports on it
without the others' outputs)."""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow

from deepprune import paths
from deepprune.report import build_figures, render_index
from flows._stage import run_stage, stage_params, stage_run
from tasks.report import load_corpus_results, read_transfer, write_figure, write_page


def _only(transfer: dict[str, Any] | None, corpora: list[str]) -> dict[str, Any] | None:
    """The transfer matrix restricted to the chosen corpora (None when none of its cells is left)."""
    if transfer is None:
        return None
    kept = [c for c in transfer["corpora"] if c in corpora]
    if not kept:
        return None
    return {**transfer, "corpora": kept,
            "prefixes": {c: p for c, p in transfer["prefixes"].items() if c in kept},
            "online_cells": {k: v for k, v in transfer.get("online_cells", {}).items()
                             if all(part in kept for part in k.split("__"))},
            "cells": [c for c in transfer["cells"] if c["train"] in kept and c["test"] in kept]}


@flow(name="report", flow_run_name="report", log_prints=True)
def report_flow(only: str | None = None, params_path: str = "params.yaml") -> str:
    """Render the report for every corpus in params, or for the corpora named in `only` ('a+b')."""
    params = stage_params(params_path)
    corpora = list(params.corpora) if only is None else only.split("+")
    for name in corpora:
        params.corpus(name)  # an unknown name is an error listing the known ones
    with stage_run("report", only, {"report": params.report.model_dump(), "corpora": corpora}) as run:
        results = {c: load_corpus_results(c, list(params.judge_lm.compare), params.judge.fnr, params.judge.threshold,
                                          judge_lm=c in params.judge_lm.corpora, online=c in params.online.corpora)
                   for c in corpora}
        transfer = _only(read_transfer(paths.transfer_results()), corpora)
        figures = build_figures(params, results)
        for name, fig in figures.items():
            write_figure(fig, paths.figure(name, only))
        page = write_page(render_index(params, results, figures, transfer), paths.report_index(only))
        run.log_artifact(page)
        run.log_artifact(paths.figures_dir(only), folder="figures")
        print(f"report: {page} ({len(figures)} figures)")
        return page


def main() -> None:
    args = sys.argv[1:]
    if not args:
        run_stage("report", report_flow)
    elif len(args) == 2 and args[0] == "--corpus" and args[1].strip(","):
        run_stage("report", report_flow, "+".join(name.strip() for name in args[1].split(",") if name.strip()))
    else:
        raise SystemExit("usage: python -m flows.report [--corpus NAME[,NAME...]]  (no option: every corpus in "
                         "params.yaml, into reports/index.html)")


if __name__ == "__main__":
    main()
