"""Flow of the report stage: figures and reports/index.html from every corpus's outputs."""

from __future__ import annotations

import sys

from prefect import flow

from deepprune import paths
from deepprune.report import build_figures, render_index
from flows._stage import run_stage, stage_params, stage_run
from tasks.report import load_corpus_results, write_figure, write_page


@flow(name="report", flow_run_name="report", log_prints=True)
def report_flow(params_path: str = "params.yaml") -> str:
    """Render the report for every corpus in params."""
    params = stage_params(params_path)
    with stage_run("report", None, {"report": params.report.model_dump(), "corpora": list(params.corpora)}) as run:
        results = {c: load_corpus_results(c, list(params.judge_lm.compare), params.judge.fnr, params.judge.threshold,
                                          judge_lm=c in params.judge_lm.corpora, online=c in params.online.corpora)
                   for c in params.corpora}
        figures = build_figures(params, results)
        for name, fig in figures.items():
            write_figure(fig, paths.figure(name))
        page = write_page(render_index(params, results, figures), paths.report_index())
        run.log_artifact(page)
        run.log_artifact(paths.figures_dir(), folder="figures")
        print(f"report: {page} ({len(figures)} figures)")
        return page


def main() -> None:
    run_stage("report", report_flow)


if __name__ == "__main__":
    main()
