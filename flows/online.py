"""Flow of the online stage: true online pruning on a live corpus. The pruning controller (the one the prune stage
runs over the replay engine) drives the sample stage's engine; cons@N, DeepPrune online (one run per tau) and
DeepConf online stop its traces for real, on the same problems and trace seeds, and the engine's token counts are
compared side by side."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

from prefect import flow

from deepprune import paths
from deepprune.io import atomic_open, json_safe
from deepprune.sampling.live import TRACE_SEED_RULE, make_engine, managed_server
from deepprune.pruning.online import OnlineProblem, format_comparison, outcome_to_json
from deepprune.sampling.problems import DATASETS, build_messages, load_problems
from flows._stage import child_run, run_stage, stage_params, stage_run, write_output, write_output_rows
from tasks.online import judge_model_path, load_online_judge, run_online

FIGURES = ("tokens", "token_reduction", "accuracy", "sequential_depth", "wall_seconds", "tokens_per_second",
           "judge_seconds")
REASONS = ("finished", "pruned", "confidence_stop", "length")


def _fingerprint(params, corpus: str) -> str:
    """Everything that decides an outcome: sampling settings, the corpus, online params, seed, the judge's bytes."""
    judge = judge_model_path(params)
    judge_digest = hashlib.sha256(Path(judge).read_bytes()).hexdigest() if judge else params.online.judge.variant
    blob = json.dumps([params.sample.model_dump(exclude={"limit", "skip_invalid"}),
                       params.corpus(corpus).model_dump(exclude={"limit"}), params.online.model_dump(),
                       params.seed, judge_digest, params.judge.encoder_path], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@flow(name="online", flow_run_name="online@{corpus}", log_prints=True)
def online_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    params = stage_params(params_path)
    cfg, corpus_cfg = params.online, params.corpus(corpus)
    if corpus_cfg.importer != "live":
        raise ValueError(f"online: corpus {corpus!r} is recorded (importer {corpus_cfg.importer!r}); it needs a live one")
    n = cfg.n or params.sample.n
    max_tokens = cfg.max_tokens or params.sample.generation.max_tokens
    with stage_run("online", corpus, {"seed": params.seed, "online": cfg.model_dump(), "n": n, "max_tokens": max_tokens,
                                      "sample": params.sample.model_dump(), "corpus": corpus_cfg.model_dump()}) as run:
        assert corpus_cfg.dataset is not None
        items = load_problems(corpus_cfg.dataset, corpus_cfg.path or DATASETS[corpus_cfg.dataset][0], cfg.problems)
        similarity = load_online_judge(params)
        server = managed_server(params.sample.server, paths.server_log()) \
            if params.sample.backend == "openai" else contextlib.nullcontext()
        with server:
            engine = make_engine(params.sample)
            problems = [OnlineProblem(i.problem_id, engine.render(build_messages(i, params.sample.prompts,
                                                                                 params.sample.system)), i.gold)
                        for i in items]
            comparison = run_online(engine, problems, n, max_tokens, params, similarity, corpus_cfg.answer.spec(),
                                    f"{paths.online_cache(corpus)}/{_fingerprint(params, corpus)}")
        rows = []
        for method, outcomes in comparison.outcomes.items():
            for problem, outcome in zip(problems, outcomes):
                row = outcome_to_json(outcome)
                rows.append(json_safe({"problem_id": problem.problem_id, "gold": problem.gold, **row}))
        write_output_rows(paths.online_outcomes(corpus), rows)
        meta = {"corpus": corpus, "engine": engine.identity, "n": n, "max_tokens": max_tokens, "k": cfg.k,
                "problems": [p.problem_id for p in problems], "judge": {**cfg.judge.model_dump(),
                                                                        "path": judge_model_path(params)},
                "generation": params.sample.generation.model_dump(), "seed": params.seed,
                "trace_seed": f"{TRACE_SEED_RULE} (as the sample stage)"}
        write_output(paths.online_meta(corpus), meta)
        table_md = format_comparison(comparison.table)  # printed below with this run's timings
        with atomic_open(paths.online_comparison(corpus)) as fh:
            fh.write(format_comparison(comparison.table, timings=False) + "\n")
        run.log_params({"engine": engine.identity})
        metrics: dict[str, float | None] = {}
        for method, row in comparison.table.items():
            figures = {key: row[key] for key in FIGURES} | {f"stopped_{r}": row.get(f"stopped_{r}", 0.0) for r in REASONS}
            with child_run(run, method, {"method": method}) as child:
                child.log_metrics(figures)  # identical keys for every method: the MLflow compare view lines them up
            metrics.update({f"online/{method}/{key}": value for key, value in figures.items()})
        write_output(paths.metrics("online", corpus), metrics)
        run.log_metrics(metrics)
        run.log_artifact(paths.online_comparison(corpus))
        print(f"online[{corpus}]: {len(problems)} problems x N={n}, max {max_tokens} tokens, k={cfg.k}\n{table_md}")
        return metrics


def main() -> None:
    run_stage("online", online_flow, sys.argv[1])


if __name__ == "__main__":
    main()
