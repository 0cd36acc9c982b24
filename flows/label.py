"""Flow of the label stage: pairs, labels, folds, prefixes and the redundancy analysis (Figure 2a)."""

from __future__ import annotations

import sys

from prefect import flow

from deepprune import paths
from deepprune.pairs import redundancy_stats
from deepprune.tokens import token_unit
from deepprune.truncate import prefix_cost_stats, shared_opening_stats
from flows._stage import run_stage, stage_params, stage_run, write_output
from tasks.label import label_pairs, load_traces, make_prefixes, save_rows


@flow(name="label", flow_run_name="label@{corpus}", log_prints=True)
def label_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float]:
    """Label every within-problem pair of one corpus and build every configured prefix."""
    params = stage_params(params_path)
    cfg = params.corpus(corpus)
    spec = cfg.answer.spec()
    tokenizer = token_unit(cfg.tokenizer, params.sample.backend, params.sample.model_path,
                           params.sample.server.tokenizer_path)  # live corpora: the engine's tokens
    with stage_run("label", corpus, {"seed": params.seed, "label": params.label.model_dump(),
                                     "answer": cfg.answer.model_dump(), "tokenizer": tokenizer}) as run:
        problems, report = load_traces(paths.traces(corpus), params.sample.skip_invalid)
        pairs = label_pairs(problems, spec, params.label.folds, params.seed)
        prefixes, prefix_tokens = make_prefixes(problems, params.label, params.tokens_k(corpus), tokenizer)
        save_rows(paths.pairs(corpus), [p.__dict__ for p in pairs])
        save_rows(paths.prefixes(corpus), [{"problem_id": pid, "trace_id": tid, "prefixes": row,
                                            "prefix_tokens": prefix_tokens[(pid, tid)]}
                                           for (pid, tid), row in prefixes.items()])
        metrics = {**redundancy_stats(problems, pairs, spec), "label/skipped_traces": report.skipped,
                   **prefix_cost_stats(prefix_tokens),
                   **shared_opening_stats(prefixes, ((p.problem_id, p.trace_a, p.trace_b) for p in pairs))}
        write_output(paths.metrics("label", corpus), metrics)
        run.log_metrics(metrics)
        print(f"label[{corpus}]: {len(pairs)} pairs, same-answer share {metrics['label/same_answer_share']:.3f}")
        return metrics


def main() -> None:
    run_stage("label", label_flow, sys.argv[1])


if __name__ == "__main__":
    main()
