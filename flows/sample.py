"""Flow of the sample stage: a corpus through its backend into data/traces/<corpus>.jsonl."""

from __future__ import annotations

import sys

from prefect import flow

from deepprune.io import write_json
from deepprune.sampling import SampleRequest
from flows._stage import stage_params, stage_run
from tasks.sample import sample_traces, save_traces


def traces_path(corpus: str) -> str:
    return f"data/traces/{corpus}.jsonl"


@flow(name="sample", log_prints=True)
def sample_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float]:
    """Sample (or replay) one corpus's traces and write them with their metrics."""
    params = stage_params(params_path)
    cfg = params.corpus(corpus)
    with stage_run("sample", corpus, {"seed": params.seed, "sample": params.sample.model_dump(),
                                      "corpus": cfg.model_dump()}) as run:
        request = SampleRequest(dataset=corpus, corpus=cfg, settings=params.sample, seed=params.seed)
        problems = sample_traces(request)
        n_traces = save_traces(traces_path(corpus), problems)
        stats = request.stats
        checked = stats.get("source_answer_checked", 0)
        metrics = {
            "sample/problems": len(problems),
            "sample/traces": n_traces,
            "sample/skipped_records": int(stats.get("skipped", 0)),
            "sample/no_answer": int(stats.get("no_answer", 0)),
            "sample/total_tokens": sum(t.n_tokens for g in problems for t in g),
            "sample/extractor_agreement_with_source": (stats.get("source_answer_agrees", 0) / checked) if checked else None,
        }
        write_json(f"reports/metrics/sample_{corpus}.json", metrics)
        run.log_metrics(metrics)
        print(f"sample[{corpus}]: {n_traces} traces of {len(problems)} problems -> {traces_path(corpus)}")
        return metrics


def main() -> None:
    sample_flow(sys.argv[1])


if __name__ == "__main__":
    main()
