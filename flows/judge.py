"""Flow of the judge stage: every judge variant on held-out problems, side by side (Table 1 style)."""

from __future__ import annotations

import sys

from prefect import flow

from deepprune import paths
from deepprune.judges import judge_class
from deepprune.judges.calibration import expected_calibration_error, reliability
from deepprune.judges.evaluate import VariantResult, variant_recipe
from deepprune.metric_names import AUROC_WITHIN_PROBLEM, AUROC_WITHIN_PROBLEM_COUNT
from deepprune.metrics import finite_or_none, roc_points, within_problem_auroc
from deepprune.truncate import prefix_name
from flows._stage import (cell_params, child_run, log_roc, run_stage, stage_params, stage_run, write_output,
                          write_output_rows)
from tasks.judge import evaluate_judges, fit_final_judge, load_embeddings, load_encoder, load_labels, make_pair_data


def _metric_keys(name: str, result: VariantResult, labels, problems) -> dict[str, float | None]:  # type: ignore[no-untyped-def]
    """A variant's fold summary, its pooled out-of-fold metrics, its AUROC within a problem (out-of-fold scores),
    and the calibration error of its scores before and after calibration (equal for a judge that is not
    calibrated)."""
    out = {f"judge/{name}/{key}": finite_or_none(value) for key, value in result.summary.items()}
    out.update({f"judge/{name}/pooled_{key}": finite_or_none(value) for key, value in result.pooled.items()
                if key not in ("n_pairs", "n_different")})
    within, n_problems = within_problem_auroc(labels, result.oof_scores, problems)
    out[f"judge/{name}/{AUROC_WITHIN_PROBLEM}"] = finite_or_none(within)
    out[f"judge/{name}/{AUROC_WITHIN_PROBLEM_COUNT}"] = n_problems
    raw = result.raw_oof if result.raw_oof is not None else result.oof_scores
    out[f"judge/{name}/ece"] = finite_or_none(expected_calibration_error(labels, result.oof_scores))
    out[f"judge/{name}/ece_uncalibrated"] = finite_or_none(expected_calibration_error(labels, raw))
    return out


@flow(name="judge", flow_run_name="judge@{corpus}", log_prints=True)
def judge_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    """Cross-validate every judge variant on one corpus, then fit and save the trained ones on all pairs."""
    params = stage_params(params_path)
    cfg = params.judge
    truncation = params.truncation(corpus)
    prefix = prefix_name(truncation.strategy, truncation.k)
    with stage_run("judge", corpus, {"seed": params.seed, "judge": cfg.model_dump(),
                                     "truncation": truncation.model_dump()}) as run:
        pairs, prefixes = load_labels(corpus)
        encoder = load_encoder(cfg.encoder_path, cfg.max_length)
        data = make_pair_data(pairs, prefixes, load_embeddings(paths.embeddings(corpus)), prefix,
                              paths.prefixes(corpus))
        results = evaluate_judges(data, cfg, encoder, params.seed)
        metrics: dict[str, float | None] = {"judge/n_pairs": len(pairs), "judge/n_folds": params.label.folds}
        folds_doc: dict[str, object] = {"prefix": prefix, "variants": {}}
        for name, result in results.items():
            keys = _metric_keys(name, result, data.labels, data.problems)
            metrics.update(keys)
            fpr, tpr, _ = roc_points([p.label for p in pairs], result.oof_scores)
            folds_doc["variants"][name] = {  # type: ignore[index]
                "per_fold": [{k: finite_or_none(v) for k, v in f.items()} for f in result.per_fold],
                "roc": {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()},
                "train_loss": result.train_loss,
                "calibrated": result.raw_oof is not None,
                "calibration": [list(ab) for ab in result.calibration],
                "reliability": reliability(data.labels, result.oof_scores),
                "reliability_uncalibrated": reliability(
                    data.labels, result.raw_oof if result.raw_oof is not None else result.oof_scores),
            }
            cell = cell_params(params, corpus, truncation, **variant_recipe(cfg.variants[name], cfg.train))
            with child_run(run, name, cell) as child:
                child.log_metrics({k.split("/", 2)[2]: v for k, v in keys.items() if v is not None})
                log_roc(child, {name: (data.labels, result.oof_scores)}, f"{corpus}: {name}, held-out problems")
            variant = cfg.variants[name]
            if judge_class(variant.kind).trainable:
                final = fit_final_judge(data, cfg, variant, encoder, params.seed, result.raw_oof)
                path = paths.judge_model(corpus, name)
                final.save(path, {"variant": name, "corpus": corpus, "prefix": prefix})
                run.log_artifact(path, folder="models")
        primary, baseline = results[cfg.primary].summary["auroc"], results[cfg.baseline].summary["auroc"]
        metrics["judge/primary_minus_baseline_auroc"] = finite_or_none(primary - baseline)
        write_output_rows(paths.judge_scores(corpus), (
            {**p.__dict__, "scores": {name: finite_or_none(r.oof_scores[i]) for name, r in results.items()}}
            for i, p in enumerate(pairs)))
        write_output(paths.judge_folds(corpus), folds_doc)
        write_output(paths.metrics("judge", corpus), metrics)
        run.log_metrics(metrics)
        verdict = "beats" if primary > baseline else "does NOT beat"
        print(f"judge[{corpus}]: {cfg.primary} AUROC {primary:.3f} {verdict} {cfg.baseline} {baseline:.3f} "
              f"(held-out problems, {params.label.folds} folds, prefix {prefix})")
        return metrics


def main() -> None:
    run_stage("judge", judge_flow, sys.argv[1])


if __name__ == "__main__":
    main()
