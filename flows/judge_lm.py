"""Flow of the judge_lm stage: the paper's causal-LM judge, fine-tuned and zero-shot, on held-out pairs (at CPU
scale by default). It does not read the judge stage's outputs, so changing an embedding judge never reruns this
(slow) stage; the report scores `judge_lm.compare` on exactly the pairs written here."""

from __future__ import annotations

import sys

from prefect import flow

from deepprune import paths
from deepprune.metrics import finite_or_none
from deepprune.judges.evaluate import lm_judge_recipe, lm_scores, pair_data
from deepprune.pairs import prefix_texts
from deepprune.truncate import prefix_name
from flows._stage import (cell_params, child_run, log_roc, run_stage, stage_params, stage_run, write_output,
                          write_output_rows)
from tasks.judge import load_labels
from tasks.judge_lm import evaluate_lm_judge, load_lm


@flow(name="judge_lm", flow_run_name="judge_lm@{corpus}", log_prints=True)
def judge_lm_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float | None]:
    """Fine-tune the causal-LM judge fold by fold; report it, its zero-shot self and the compared judges."""
    params = stage_params(params_path)
    cfg = params.judge_lm
    prefix = prefix_name(cfg.truncation.strategy, cfg.truncation.k)
    with stage_run("judge_lm", corpus, {"seed": params.seed, "judge_lm": cfg.model_dump(),
                                        "prompt_version": cfg.prompt.version}) as run:
        pairs, prefixes = load_labels(corpus)
        data = pair_data(pairs, prefix_texts(prefixes, prefix, paths.prefixes(corpus)))
        model, tokenizer = load_lm(cfg.model_path, cfg.dtype, cfg.device)
        result = evaluate_lm_judge(data.texts_a, data.texts_b, data.labels, data.folds, cfg, params.seed,
                                   params.judge.fnr, params.judge.threshold, True, paths.judge_lm_checkpoints(corpus), model,
                                   tokenizer, keep_judges=True)
        metrics: dict[str, float | None] = {
            "judge_lm/eval_pairs": int(sum(len(r) for r in result.eval_rows)),
            "judge_lm/folds": len(result.eval_rows), "judge_lm/train_steps": cfg.train.steps,
            **{f"judge_lm/{k}": finite_or_none(v) for k, v in result.throughput.items()}}
        for name, summary in result.summary.items():
            keys = {f"judge_lm/{name}/{k}": finite_or_none(v) for k, v in summary.items()}
            metrics.update(keys)
            cell = cell_params(params, corpus, cfg.truncation, judge=name, prefix=prefix,
                               **lm_judge_recipe(cfg, trained=name == "causal_lm"))
            with child_run(run, name, cell) as child:
                child.log_metrics({k.split("/", 2)[2]: v for k, v in keys.items() if v is not None})
                log_roc(child, {name: lm_scores(result, data.labels, name)}, f"{corpus}: {name}, held-out pairs")
        for fold, judge in enumerate(result.judges):
            path = paths.judge_lm_model(corpus, fold)
            judge.save_adapter(path, {"corpus": corpus, "prefix": prefix, "held_out_fold": fold})
            run.log_artifact(path, folder="models")
        rows = []
        for fold_index, idx in enumerate(result.eval_rows):
            for j, i in enumerate(idx):
                rows.append({**pairs[i].__dict__, "scores": {n: finite_or_none(float(s[fold_index][j]))
                                                             for n, s in result.scores.items()}})
        # the evaluated pairs, so other judges can be scored on exactly these (the report does)
        write_output_rows(paths.judge_lm_scores(corpus), rows)
        write_output(paths.judge_lm_train_loss(corpus), {"train_loss": result.train_loss})
        write_output(paths.metrics("judge_lm", corpus), metrics)
        run.log_metrics(metrics)
        line = ", ".join(f"{n} {result.summary[n]['auroc']:.3f}±{result.summary[n].get('auroc_std', float('nan')):.3f}"
                         for n in result.summary)
        print(f"judge_lm[{corpus}]: AUROC on {metrics['judge_lm/eval_pairs']} held-out pairs: {line}")
        return metrics


def main() -> None:
    run_stage("judge_lm", judge_lm_flow, sys.argv[1])


if __name__ == "__main__":
    main()
