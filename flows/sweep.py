"""Flow of the sweep stage: a focal-loss grid over a trainable judge's recipe. Every point is a Prefect flow run
and an MLflow child run (same metric names, so MLflow's compare view lines them up); points run in parallel on
the configured task runner; the best point is fitted on every pair and registered as an MLflow model version."""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow

from deepprune import paths
from deepprune.config import Params
from deepprune.judges.causal_lm import load_causal_lm
from deepprune.judges.evaluate import (PairData, cross_validate, lm_judge_recipe, lm_scores, pair_data, train_final,
                                       variant_recipe)
from deepprune.judges.sweep import SweepPoint, best_point, encoder_recipe, grid_points, lm_recipe
from deepprune.metrics import finite_or_none
from deepprune.pairs import prefix_texts, read_pairs, read_prefixes
from deepprune.progress import track
from deepprune.tracking import Run, register_model
from deepprune.truncate import prefix_name
from flows._stage import (cell_params, child_run, log_roc, on_cluster, run_stage, stage_params, stage_run,
                          write_output)
from tasks.cluster import Placement, read_once, run_cell
from tasks.judge import cell_encoder, corpus_data
from tasks.judge_lm import evaluate_lm_judge


def _clean(summary: dict[str, float]) -> dict[str, float | None]:
    return {k: finite_or_none(v) for k, v in summary.items()}


@flow(name="sweep-point", flow_run_name="sweep@{corpus}:{point.name}", log_prints=True, validate_parameters=False)
def sweep_point_flow(point: SweepPoint, parent: Run, params: Params, corpus: str,
                     placement: Placement) -> tuple[dict[str, float], Any]:
    """One grid point: its recipe cross-validated on the corpus's grouped folds, logged as a child run. Returns
    its summary and, for a calibrated encoder judge, its uncalibrated out-of-fold scores (the final fit's map)."""
    data, lm = point_inputs(params, corpus, placement)
    raw = None
    sweep = params.sweep
    if sweep.judge == "encoder":
        variant, cfg = encoder_recipe(point, params.judge)
        cell = cell_params(params, corpus, params.truncation(corpus), judge=sweep.judge,
                           **variant_recipe(variant, cfg.train))
    else:
        cfg_lm = lm_recipe(point, params.judge_lm)
        cell = cell_params(params, corpus, cfg_lm.truncation, judge=sweep.judge, **lm_judge_recipe(cfg_lm, True))
    with child_run(parent, point.name, {**cell, "point": point.as_dict}) as run:
        if sweep.judge == "encoder":
            result = cross_validate(data, cfg, cell_encoder(placement, cfg), params.seed)[point.name]
            summary, roc = result.summary, (data.labels, result.oof_scores)  # type: ignore[union-attr]
            raw = result.raw_oof  # type: ignore[union-attr]
        else:
            model, tokenizer = lm  # type: ignore[misc]
            lm_result = evaluate_lm_judge.fn(data.texts_a, data.texts_b, data.labels, data.folds, cfg_lm,  # type: ignore[union-attr]
                                             params.seed, params.judge.fnr, params.judge.threshold, False, None,
                                             model, tokenizer)
            summary, roc = lm_result.summary["causal_lm"], lm_scores(lm_result, data.labels, "causal_lm")  # type: ignore[union-attr]
        run.log_metrics({k: v for k, v in summary.items()})
        log_roc(run, {point.name: roc}, f"{corpus}: sweep point {point.name}")
        print(f"sweep[{corpus}] {point.name}: {sweep.metric} {summary.get(sweep.metric, float('nan')):.4f}")
        return summary, raw


def point_inputs(params: Params, corpus: str, placement: Placement) -> tuple[PairData, tuple[Any, Any] | None]:
    """What every point of a corpus's sweep reads (the pairs at the judge's truncation, with their embeddings for the
    encoder judge, or the causal LM and its pairs' texts), read once per process from the project's paths
    (tasks.cluster.read_once)."""
    if params.sweep.judge == "encoder":
        truncation = params.truncation(corpus)
        return corpus_data(placement, corpus, prefix_name(truncation.strategy, truncation.k)), None
    cfg = params.judge_lm
    files = [paths.pairs(corpus), paths.prefixes(corpus)]

    def read() -> PairData:
        labels_path = str(placement.path(files[1]))
        texts = prefix_texts(read_prefixes(labels_path), prefix_name(cfg.truncation.strategy, cfg.truncation.k),
                             labels_path)
        return pair_data(read_pairs(placement.path(files[0])), texts)

    lm = read_once(placement, ["causal_lm", cfg.model_path, cfg.dtype, cfg.device], [],
                   lambda: load_causal_lm(cfg.model_path, cfg.dtype, cfg.device))
    return read_once(placement, ["lm_pairs", corpus, cfg.truncation.model_dump(mode="json")], files, read), lm


@flow(name="sweep", flow_run_name="sweep@{corpus}", log_prints=True)
def sweep_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    """Every distinct grid point of params `sweep`, then the best point fitted and registered."""
    params = stage_params(params_path)
    sweep = params.sweep
    points = grid_points(sweep, params.judge, params.judge_lm)
    with stage_run("sweep", corpus, {"seed": params.seed, "sweep": sweep.model_dump(), "points": len(points)}) as run:
        placement = Placement.of_stage(params.threads, params.tracking)
        data, _ = point_inputs(params, corpus, placement)  # read once here: threads share it
        results = []
        raw_oof: dict[str, Any] = {}
        with track("evaluating", len(points), "points") as progress:  # open first: the points' loops stay silent
            futures = [run_cell.submit(sweep_point_flow, placement, point=point, parent=run, params=params,
                                        corpus=corpus) for point in points]
            for point, future in zip(points, futures):
                summary, raw_oof[point.name] = future.result()
                results.append((point, summary))
                progress.advance()
        ranked = best_point(results, sweep.metric)
        doc: dict[str, Any] = {"judge": sweep.judge, "metric": sweep.metric, "best": ranked and ranked[0].name,
                               "points": [{"name": p.name, "settings": p.as_dict, "summary": _clean(dict(s))}
                                          for p, s in results]}
        if ranked is None:  # one class of pairs: nothing to rank, fit or register
            metrics: dict[str, float | None] = {"sweep/points": len(points), "sweep/ranked": 0}
            write_output(paths.sweep_results(corpus), doc)
            write_output(paths.metrics("sweep", corpus), metrics)
            run.log_metrics(metrics)
            print(f"sweep[{corpus}]: {sweep.metric} is undefined on every point (the pairs have one class): "
                  f"no best point, nothing registered")
            return metrics
        best, best_summary = ranked
        metrics = {"sweep/points": len(points), "sweep/ranked": 1,
                   **{f"sweep/best/{k}": v for k, v in _clean(dict(best_summary)).items()}}
        if sweep.judge == "encoder":
            variant, cfg = encoder_recipe(best, params.judge)
            final = train_final(data, cfg, variant, cell_encoder(placement, cfg), params.seed, raw_oof[best.name])
            path = paths.sweep_best(corpus)
            final.save(path, {"variant": best.name, "corpus": corpus, "sweep_metric": sweep.metric})
            run.log_artifact(path, folder="best")
            if sweep.register_as:
                name = f"{sweep.register_as}-{corpus}"
                version = register_model(run, "best/best.safetensors", name,
                                         {"point": best.name, sweep.metric: str(best_summary.get(sweep.metric))})
                # the version counts this store's earlier runs: a fact of the store, not of the inputs, so it is a tag
                # of the run, not part of the output (two clones must write the same results.json)
                doc["registered"] = {"name": name}
                run.set_tags({"registered_model": name, "registered_version": str(version)})
                print(f"sweep[{corpus}]: registered {name} version {version}")
        write_output(paths.sweep_results(corpus), doc)
        write_output(paths.metrics("sweep", corpus), metrics)
        run.set_tags({"best_point": best.name})
        run.log_metrics(metrics)
        print(f"sweep[{corpus}]: best of {len(points)} points is {best.name} "
              f"({sweep.metric} {best_summary.get(sweep.metric, float('nan')):.4f})")
        return metrics


def run_sweep(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    """The sweep flow on the task runner params `cluster` names."""
    return on_cluster(sweep_flow, corpus, params_path=params_path)


def main() -> None:
    # run_sweep of this module imported by its name, not as `__main__`: a cluster worker imports the point flow
    # from flows.sweep, where pickling `__main__`'s functions by value would drag its globals (a lock) along
    from flows import sweep

    run_stage("sweep", sweep.run_sweep, sys.argv[1])


if __name__ == "__main__":
    main()
