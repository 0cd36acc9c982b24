"""Flow of the transfer stage: every trained judge variant, fitted on all pairs of one corpus by the judge stage,
scores every pair of every other corpus, each corpus cut at its own truncation (deepprune.judges.transfer); the
diagonal is the judge stage's out-of-fold scores. Metrics `transfer/<train>__<test>/auroc` (the primary variant), one MLflow child run per cell."""

from __future__ import annotations

import json

import numpy as np
from prefect import flow

from deepprune import paths
from deepprune.judges import judge_class
from deepprune.judges.transfer import TRANSFER, cell_name, transfer_matrix
from deepprune.metric_names import tnr_at_fnr_name
from deepprune.metrics import finite_or_none
from deepprune.truncate import prefix_name
from deepprune.progress import track
from flows._stage import (cell_params, child_run, log_roc, on_cluster, run_stage, stage_params, stage_run,
                          write_output)
from tasks.cluster import Placement, run_cell
from tasks.judge import corpus_data, transfer_pair


def _out_of_fold(corpus: str, variants: list[str]) -> dict[str, np.ndarray]:
    with open(paths.judge_scores(corpus), encoding="utf-8") as handle:
        rows = [json.loads(line)["scores"] for line in handle]
    return {v: np.array([np.nan if r[v] is None else r[v] for r in rows], dtype=float) for v in variants}


@flow(name="transfer", flow_run_name="transfer", log_prints=True)
def transfer_flow(params_path: str = "params.yaml") -> dict[str, float | None]:
    """The transfer matrix of every judge variant over every ordered pair of corpora: one cell per (train, test) pair
    of different corpora, on the task runner of params `cluster`."""
    params = stage_params(params_path)
    cfg = params.judge
    corpora = list(params.corpora)
    prefixes = {c: prefix_name(params.truncation(c).strategy, params.truncation(c).k) for c in corpora}
    variants = {name: judge_class(v.kind).trainable for name, v in sorted(cfg.variants.items())}
    online_cells = {cell_name(params.online.judge.corpus, c): params.online.judge.variant for c in params.online.corpora
                    if c in params.corpora}
    with stage_run("transfer", None, {"seed": params.seed, "corpora": corpora, "primary": cfg.primary,
                                      "prefixes": prefixes}) as run:
        placement = Placement.of_stage(params.threads, params.tracking)
        data = {c: corpus_data(placement, c, prefixes[c]) for c in corpora}  # read once here: threads share them
        trained = [v for v, trains in variants.items() if trains]
        cross = [(train, test) for train in corpora for test in corpora if train != test]
        scored: dict[tuple[str, str, str], np.ndarray] = {}
        with track("transferring", len(cross), "cells") as progress:
            futures = [run_cell.submit(transfer_pair, placement, params=params, train=train, test=test,
                                       prefix=prefixes[test], variants=trained) for train, test in cross]
            for (train, test), future in zip(cross, futures):
                scored.update({(train, variant, test): s for variant, s in future.result().items()})
                progress.advance()
        cells = transfer_matrix(corpora, variants, {c: d.labels for c, d in data.items()},
                                {c: _out_of_fold(c, list(variants)) for c in corpora},
                                lambda train, variant, test: scored[(train, variant, test)], cfg.fnr, cfg.threshold)
        tnr = tnr_at_fnr_name(cfg.fnr)
        metrics: dict[str, float | None] = {}
        for cell in cells:
            if cell.variant == cfg.primary:
                metrics.update({f"transfer/{cell.name}/{key}": finite_or_none(cell.metrics[key])
                                for key in ("auroc", tnr, "n_pairs")})
        for train in corpora:
            for test in corpora:
                here = [c for c in cells if (c.train, c.test) == (train, test)]
                primary = next(c for c in here if c.variant == cfg.primary)
                name = cell_name(train, test)
                settings = {**cell_params(params, test, params.truncation(test), variant=cfg.primary), "train_corpus": train,
                            "test_corpus": test, "kind": primary.kind, "used_by_online": name in online_cells}
                with child_run(run, name, settings) as child:
                    child.log_metrics({f"{c.variant}/{k}" if c.variant != cfg.primary else k: v
                                       for c in here for k, v in c.metrics.items() if finite_or_none(v) is not None})
                    log_roc(child, {cfg.primary: (data[test].labels, primary.scores)},
                            f"{cfg.primary}: trained on {train}, scored on {test}")
        write_output(paths.transfer_results(), {
            "corpora": corpora, "primary": cfg.primary, "prefixes": prefixes, "online_cells": online_cells,
            "cells": [{"train": c.train, "test": c.test, "variant": c.variant, "kind": c.kind,
                       "metrics": {k: finite_or_none(v) for k, v in c.metrics.items()}} for c in cells]})
        write_output(paths.metrics("transfer", None), metrics)
        run.log_metrics(metrics)
        for cell in cells:
            if cell.variant == cfg.primary and cell.kind == TRANSFER:
                auroc = finite_or_none(cell.metrics["auroc"])
                print(f"transfer: {cfg.primary} trained on {cell.train}, scored on {cell.test}: AUROC "
                      f"{'n/a (one class)' if auroc is None else f'{auroc:.3f}'}")
        return metrics


def run_transfer(params_path: str = "params.yaml") -> dict[str, float | None]:
    """The transfer flow on the task runner params `cluster` names."""
    return on_cluster(transfer_flow, params_path=params_path)


def main() -> None:
    run_stage("transfer", run_transfer)


if __name__ == "__main__":
    main()
