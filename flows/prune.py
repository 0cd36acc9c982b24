"""Flow of the prune stage: the pruning controller over the replay engine (recorded traces generated again) on
held-out judge scores: DeepPrune and its peers on the same seeded draws, with intervals."""

from __future__ import annotations

import sys
from dataclasses import asdict

from prefect import flow

from deepprune import paths
from deepprune.metrics import finite_or_none
from deepprune.pruning.simulate import (add_judge_seconds, add_matched_minus_random, clustering_settings,
                                       deepconf_warmup_error, method_specs, summarize)
from flows._stage import child_run, run_stage, stage_params, stage_run, write_output
from tasks.label import load_traces
from deepprune.truncate import prefix_name
from tasks.prune import load_problems, measure_judge_cost, run_simulation, tune_taus


@flow(name="prune", flow_run_name="prune@{corpus}", log_prints=True)
def prune_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    """Online pruning on one recorded corpus, replayed: every method, same draws, same accounting."""
    params = stage_params(params_path)
    cfg, spec = params.prune, params.corpus(corpus).answer.spec()
    truncation = params.truncation(corpus)
    k, prefix = truncation.k, prefix_name(truncation.strategy, truncation.k)
    by_text = truncation.strategy != "tokens"  # a prefix cut by the text costs each trace what the label stage measured
    with stage_run("prune", corpus, {"seed": params.seed, "prune": cfg.model_dump(),
                                     "truncation": truncation.model_dump()}) as run:
        by_problem, _ = load_traces(paths.traces(corpus), params.sample.skip_invalid)
        problems, engine = load_problems(by_problem, paths.judge_scores(corpus), spec, cfg.judge,
                                         params.judge.baseline, paths.prefixes(corpus) if by_text else None,
                                         prefix if by_text else None)
        n = cfg.n or min(p.n for p in problems)
        if all(p.has_logprobs for p in problems):  # else DeepConf is skipped ("needs logprobs")
            error = deepconf_warmup_error(cfg.deepconf.warmup, n, corpus, cfg.n is not None)
            if error:
                raise ValueError(error)
        methods = method_specs(cfg)
        tuned = None
        if cfg.tune is not None:  # tau per fold, picked on the other folds' problems, before any method is scored
            tuned = tune_taus(problems, engine, clustering_settings(cfg), list(cfg.tune.grid),
                              cfg.tune.target_change_pts, n, k, cfg.repetitions, params.seed)
        results = run_simulation(problems, engine, methods, n, k, cfg.repetitions, params.seed,
                                 tuned["taus"] if tuned else None)
        summary = summarize(results, "cons")
        add_matched_minus_random(summary, results, methods)
        # replay reuses the judge stage's scores; what judging online would cost is measured on the saved judge
        cost = measure_judge_cost(paths.judge_model(corpus, cfg.judge),
                                  paths.prefixes(corpus), prefix,
                                  params.judge.encoder_path, params.judge.max_length)
        add_judge_seconds(summary, methods, cost)
        metrics: dict[str, float | None] = {"prune/n": n, "prune/k": k, "prune/problems": len(problems),
                                            **{f"prune/judge_cost/{key}": v for key, v in cost.items()}}
        for method in methods:
            row = summary[method.name]
            keys = {f"prune/{method.name}/{key}": finite_or_none(v) for key, v in row.items() if not isinstance(v, str)}
            metrics.update(keys)
            with child_run(run, method.name, {"kind": method.kind, **dict(method.settings)}) as child:
                child.set_tags({"skipped": str(row.get("skipped", ""))})
                child.log_metrics({key.split("/", 2)[2]: v for key, v in keys.items() if v is not None})
        headline, oracle = f"deepprune_tau{cfg.tau:g}", summary["oracle"]
        saved = summary[headline]["token_reduction"]
        metrics["prune/headline/oracle_savings_share"] = finite_or_none(saved / oracle["token_reduction"]) \
            if oracle["token_reduction"] else None
        if tuned is not None:
            metrics["prune/tuned/mean_tau"] = float(sum(tuned["taus"].values()) / len(tuned["taus"]))
        write_output(paths.prune_results(corpus), {
            "n": n, "k": k, "strategy": truncation.strategy, "headline": headline, "summary": summary, "tuned": tuned,
            "methods": [asdict(m) for m in methods],
            "per_repetition": {name: asdict(r) for name, r in results.items()}})
        write_output(paths.metrics("prune", corpus), metrics)
        run.log_metrics(metrics)
        head = summary[headline]
        print(f"prune[{corpus}]: N={n}, prefix {prefix}: {headline} saves {saved:.1%} of cons@N's tokens "
              f"(oracle {oracle['token_reduction']:.1%}) at accuracy {head['accuracy']:.3f} "
              f"vs {summary['cons']['accuracy']:.3f}")
        return metrics


def main() -> None:
    run_stage("prune", prune_flow, sys.argv[1])


if __name__ == "__main__":
    main()
