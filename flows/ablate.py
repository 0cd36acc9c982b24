"""Flow of the ablate stage: the truncation ablation (Figure 4: AUROC against k, per strategy) and Table 1
(4 training variants x 2 truncations), on every prefix the label stage built."""

from __future__ import annotations

import sys
from collections import defaultdict

from prefect import flow

from deepprune import paths
from deepprune.config import TruncationConfig
from deepprune.judges.evaluate import AblationRow, variant_recipe
from deepprune.metric_names import ablate_names
from deepprune.metrics import finite_or_none
from deepprune.progress import track
from deepprune.truncate import parse_prefix_name
from flows._stage import (cell_params, child_run, log_roc, on_cluster, run_stage, stage_params, stage_run,
                          write_output)
from tasks.cluster import Placement, run_cell
from tasks.judge import ablation_truncation, labelled


@flow(name="ablate", flow_run_name="ablate@{corpus}", log_prints=True)
def ablate_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    """Every variant of params `ablate.variants` at every truncation the embed stage computed: one cell per
    truncation, on the task runner of params `cluster`."""
    params = stage_params(params_path)
    cfg = params.ablate
    with stage_run("ablate", corpus, {"seed": params.seed, "ablate": cfg.model_dump(), "train": params.judge.train.model_dump(),
                                      "label.folds": params.label.folds}) as run:
        placement = Placement.of_stage(params.threads, params.tracking)
        inputs = labelled(placement, corpus)  # read once here: threads share it
        pairs = inputs.pairs
        prefixes = sorted(inputs.table.matrices, key=parse_prefix_name)
        rows: list[AblationRow] = []
        with track("ablating", len(prefixes), "truncations") as progress:  # open first: the cells' loops stay silent
            futures = [run_cell.submit(ablation_truncation, placement, params=params, corpus=corpus, prefix=prefix)
                       for prefix in prefixes]
            for future in futures:
                rows.extend(future.result())
                progress.advance()
        labels = [p.label for p in pairs]
        kept = ablate_names(params.judge.fnr, params.judge.threshold)
        metrics: dict[str, float | None] = {}
        by_truncation: dict[tuple[str, int], list[AblationRow]] = defaultdict(list)
        for row in rows:
            by_truncation[(row.strategy, row.k)].append(row)
            for key in kept:
                metrics[f"ablate/{row.strategy}_{row.k}/{row.variant}/{key}"] = finite_or_none(row.summary[key])
        for (strategy, k), group in by_truncation.items():
            recipes = {r.variant: variant_recipe(params.judge.variants[r.variant], params.judge.train) for r in group}
            cell = cell_params(params, corpus, TruncationConfig(strategy=strategy, k=k), variants=recipes)
            with child_run(run, f"{strategy}_{k}", cell) as child:
                child.log_metrics({f"{r.variant}/{key}": r.summary[key] for r in group for key in kept
                                   if finite_or_none(r.summary[key]) is not None})
                log_roc(child, {r.variant: (labels, r.oof_scores) for r in group},
                        f"{corpus}: {strategy} k={k}, held-out problems")
        write_output(paths.ablate_results(corpus), {
            "judge": cfg.judge, "table_k": cfg.table_k,
            "rows": [{"strategy": r.strategy, "k": r.k, "variant": r.variant,
                      "summary": {k: finite_or_none(v) for k, v in r.summary.items()}} for r in rows]})
        write_output(paths.metrics("ablate", corpus), metrics)
        run.log_metrics(metrics)
        best = max((r for r in rows if r.variant == cfg.judge), key=lambda r: r.summary.get("auroc", 0.0))
        print(f"ablate[{corpus}]: {len(by_truncation)} truncations x {len(cfg.variants)} variants; best for "
              f"{cfg.judge}: {best.strategy} k={best.k} (AUROC {best.summary['auroc']:.3f})")
        return metrics


def run_ablate(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    """The ablate flow on the task runner params `cluster` names."""
    return on_cluster(ablate_flow, corpus, params_path=params_path)


def main() -> None:
    run_stage("ablate", run_ablate, sys.argv[1])


if __name__ == "__main__":
    main()
