"""Offline evaluation of judges on held-out problems: grouped K-fold, one set of embeddings for every variant."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepprune.config import JudgeConfig, JudgeLMConfig, TrainConfig, VariantConfig
from deepprune.judges import judge_class
from deepprune.judges.calibration import cross_fold_calibrate, fit_platt
from deepprune.judges.encoder import EncoderJudge, SentenceEncoder
from deepprune.metric_names import AUROC_WITHIN_PROBLEM, AUROC_WITHIN_PROBLEM_COUNT
from deepprune.metrics import judge_metrics, summarize_folds, within_problem_auroc
from deepprune.pairs import Pair, cap_per_problem
from deepprune.progress import track


@dataclass
class VariantResult:
    """One judge variant: out-of-fold scores for every pair, metrics per fold and summarised."""

    name: str
    oof_scores: np.ndarray
    per_fold: list[dict[str, float]]
    summary: dict[str, float]
    pooled: dict[str, float]
    train_loss: list[list[float]] = field(default_factory=list)
    raw_oof: np.ndarray | None = None        # before calibration (None: the variant is not calibrated)
    calibration: list[tuple[float, float]] = field(default_factory=list)  # each fold's Platt (a, b)


def _variant_scores(variant: VariantConfig, cfg: JudgeConfig, encoder: SentenceEncoder, seed: int,
                    data: "PairData", train: np.ndarray, test: np.ndarray,
                    frozen_state: dict | None) -> tuple[np.ndarray, list[float]]:
    """Fit one variant on the train rows and score the test rows."""
    judge = judge_class(variant.kind)(encoder, cfg.train, variant.loss, variant.oversample, seed, variant.features)
    judge.fit(data.emb_a[train], data.emb_b[train], data.labels[train],
              texts_a=[data.texts_a[i] for i in train], texts_b=[data.texts_b[i] for i in train])
    test_a, test_b = [data.texts_a[i] for i in test], [data.texts_b[i] for i in test]
    if isinstance(judge, EncoderJudge) and cfg.train.finetune_encoder:
        # the encoder itself changed: embed the held-out prefixes again, then restore it for the next fold
        scores = judge.score(encoder.embed(test_a, cfg.batch_size), encoder.embed(test_b, cfg.batch_size),
                             test_a, test_b)
        encoder.model.load_state_dict(frozen_state)
        return scores, judge.train_log
    return judge.score(data.emb_a[test], data.emb_b[test], test_a, test_b), judge.train_log


@dataclass
class PairData:
    """Pairs as arrays: prefix texts, their embeddings (computed once), labels and folds."""

    texts_a: list[str]
    texts_b: list[str]
    emb_a: np.ndarray
    emb_b: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    problems: np.ndarray  # each pair's problem id

    def training_rows(self, rows: np.ndarray, cfg: TrainConfig, seed: int) -> np.ndarray:
        """The rows a judge trains on: `rows`, at most cfg.max_pairs_per_problem per problem (cap_per_problem)."""
        return cap_per_problem(rows, self.problems, cfg.max_pairs_per_problem, seed)


def pair_data(pairs: Sequence[Pair], texts: Mapping[tuple[str, str], str],
              vectors: Mapping[tuple[str, str], np.ndarray] | None = None) -> PairData:
    """PairData from the pairs' prefix texts and, for the embedding judges, their precomputed embeddings (the
    embed stage's table); without `vectors` (the causal-LM judge reads texts only) the embeddings are empty."""
    from deepprune.judges.embeddings import pair_arrays

    emb_a, emb_b = pair_arrays(pairs, vectors) if vectors is not None else (np.zeros((0, 0)), np.zeros((0, 0)))
    return PairData([texts[(p.problem_id, p.trace_a)] for p in pairs], [texts[(p.problem_id, p.trace_b)] for p in pairs],
                    emb_a, emb_b, np.array([p.label for p in pairs], dtype=np.int64), np.array([p.fold for p in pairs]),
                    np.array([p.problem_id for p in pairs], dtype=object))


def cross_validate(data: PairData, cfg: JudgeConfig, encoder: SentenceEncoder, seed: int) -> dict[str, VariantResult]:
    """Every variant's out-of-fold scores and metrics, with the same folds and the same pairs."""
    labels, folds = data.labels, data.folds
    if (folds < 0).any():
        raise ValueError("pairs have no fold assigned (run the label stage)")
    frozen_state = ({k: v.clone() for k, v in encoder.model.state_dict().items()}
                    if cfg.train.finetune_encoder else None)
    results: dict[str, VariantResult] = {}
    fold_ids = sorted(set(folds.tolist()))
    with track("cross-validating", len(cfg.variants) * len(fold_ids), "folds") as progress:  # variants x folds
        for name, variant in sorted(cfg.variants.items()):
            first_seed = recipe_seed(seed, variant, cfg.train)
            raw = np.full(len(labels), np.nan)
            logs = []
            for fold in fold_ids:
                test = np.flatnonzero(folds == fold)
                train = data.training_rows(np.flatnonzero(folds != fold), cfg.train, seed + fold)  # every variant alike
                scores, log = _variant_scores(variant, cfg, encoder, first_seed + fold, data, train, test,
                                              frozen_state)
                raw[test] = scores
                logs.append(log)
                progress.advance()
            calibrated = cfg.calibration == "platt" and judge_class(variant.kind).trainable
            oof, maps = cross_fold_calibrate(raw, labels, folds) if calibrated else (raw, [])
            per_fold = [judge_metrics(labels[folds == fold], oof[folds == fold], cfg.fnr, cfg.threshold)
                        for fold in fold_ids]
            results[name] = VariantResult(name, oof, per_fold, summarize_folds(per_fold),
                                          judge_metrics(labels, oof, cfg.fnr, cfg.threshold), logs,
                                          raw if calibrated else None, maps)
    return results


def unused_train_keys(kind: str | None, loss: str, oversample: bool, finetune_encoder: bool = False) -> set[str]:
    """The top-level keys of a train section (judge.train, or judge_lm.train with kind None) that a recipe does not
    read: `focal` (alpha, gamma) under cross-entropy; `oversample_ratio` without oversampling; for an encoder judge
    that does not fine-tune its encoder, the finetune_ settings; for the cross-encoder, which always fine-tunes and
    has a linear head, the head's epochs, hidden and dropout and the finetune_encoder switch. The one rule that tells
    two recipes apart: variant_recipe (and so seeds and MLflow params) and the sweep's distinct points use it."""
    out = set()
    if loss != "focal":
        out.add("focal")
    if not oversample:
        out.add("oversample_ratio")
    if kind == "cross_encoder":
        out |= {"finetune_encoder", "epochs", "hidden", "dropout"}
    elif kind == "encoder" and not finetune_encoder:
        out |= {key for key in TrainConfig.model_fields if key.startswith("finetune_")} - {"finetune_encoder"}
    return out


def variant_recipe(variant: VariantConfig, train: TrainConfig) -> dict[str, Any]:
    """What defines an embedding judge variant: its own keys (kind, loss, oversample) and, for a trained kind, the
    judge.train keys its recipe uses (nested: {'train': {'focal': {'gamma': 2.0}, ...}})."""
    out: dict[str, Any] = variant.model_dump()
    if not out["features"]:
        del out["features"]  # only where a variant has them: the recipes of variants without stay as they were
    if not judge_class(variant.kind).trainable:
        return out
    unused = unused_train_keys(variant.kind, variant.loss, variant.oversample, train.finetune_encoder)
    return {**out, "train": {k: v for k, v in train.model_dump().items() if k not in unused}}


def recipe_seed(seed: int, variant: VariantConfig, train: TrainConfig) -> int:
    """The seed of a variant's cross-validation fits (fold f adds f): drawn from params' seed and what defines the
    variant (variant_recipe), never from its name or its place among the variants. One recipe cross-validated in
    the judge stage, in an ablation cell or as a sweep point therefore gets the same scores, and adding a variant
    changes no other variant's figures."""
    recipe = json.dumps(variant_recipe(variant, train), sort_keys=True)
    return (seed + 7919 * zlib.crc32(recipe.encode())) % 2 ** 31


def lm_judge_recipe(cfg: JudgeLMConfig, trained: bool) -> dict[str, Any]:
    """What defines a causal-LM judge evaluation: the prompt version and the eval sample, and for the fine-tuned
    judge the judge_lm.train keys its recipe uses."""
    out: dict[str, Any] = {"prompt_version": cfg.prompt.version, "eval": cfg.eval.model_dump()}
    if trained:
        unused = unused_train_keys(None, cfg.train.loss, cfg.train.oversample)
        out["train"] = {k: v for k, v in cfg.train.model_dump().items() if k not in unused}
    return out


def lm_scores(result: "LMEvaluation", labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One causal-LM judge's held-out (labels, scores), every evaluated fold end to end."""
    rows = np.concatenate(result.eval_rows) if result.eval_rows else np.zeros(0, dtype=int)
    scores = np.concatenate(result.scores[name]) if result.scores.get(name) else np.zeros(0)
    return np.asarray(labels)[rows], scores


def train_final(data: PairData, cfg: JudgeConfig, variant: VariantConfig, encoder: SentenceEncoder,
                seed: int, raw_oof: np.ndarray | None) -> Any:
    """A trained variant fitted on every pair (the judge that later stages load); its scores are calibrated by the
    Platt map fitted on every pair's out-of-fold score (`raw_oof`, cross_validate's `raw_oof`), where params
    calibrate (deepprune.judges.calibration)."""
    judge = judge_class(variant.kind)(encoder, cfg.train, variant.loss, variant.oversample, seed, variant.features)
    rows = data.training_rows(np.arange(len(data.labels)), cfg.train, seed)
    judge.fit(data.emb_a[rows], data.emb_b[rows], data.labels[rows], texts_a=[data.texts_a[i] for i in rows],
              texts_b=[data.texts_b[i] for i in rows])
    if cfg.calibration == "platt":
        if raw_oof is None:
            raise ValueError("judge.calibration is platt: the final judge needs its variant's uncalibrated "
                             "out-of-fold scores")
        judge.calibration = fit_platt(raw_oof, data.labels)
    return judge


def time_judge(encoder: SentenceEncoder, judge: EncoderJudge, texts: Sequence[str], repeats: int = 3,
               batch_size: int = 32) -> dict[str, float]:
    """Measured cost of judging online: seconds to encode one prefix (zero for a judge that reads no embeddings),
    and to score one pair, over every distinct pair of the prefixes, as the simulator counts judge calls (medians
    over repeats, batched as a server would batch them)."""
    import itertools
    import time

    texts = list(texts)
    if len(texts) < 2:
        raise ValueError(f"timing a judge needs at least 2 prefixes to pair, got {len(texts)}")
    rows = np.array(list(itertools.combinations(range(len(texts)), 2)), dtype=int).reshape(-1, 2)
    encode, score = [], []
    for _ in range(repeats):
        fresh = [f"{t} " for t in texts]  # fresh strings: nothing cached
        start = time.perf_counter()
        emb = encoder.embed(fresh, batch_size) if getattr(judge, "reads_embeddings", True) else None
        encode.append((time.perf_counter() - start) / len(texts) if emb is not None else 0.0)
        a, b = (emb[rows[:, 0]], emb[rows[:, 1]]) if emb is not None else (None, None)
        start = time.perf_counter()
        judge.score(a, b, [fresh[i] for i in rows[:, 0]], [fresh[j] for j in rows[:, 1]])
        score.append((time.perf_counter() - start) / len(rows))
    return {"encode_seconds_per_prefix": float(np.median(encode)), "score_seconds_per_pair": float(np.median(score))}


def balanced_subset(labels: np.ndarray, rows: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Up to per_class rows of each label, in a seeded order. AUROC and TNR do not depend on the class ratio,
    so a balanced subset measures them with far fewer (slow) causal-LM calls than the whole fold."""
    picked = []
    for label in (0, 1):
        members = rows[labels[rows] == label]
        picked.append(members[rng.permutation(len(members))[:per_class]])
    return np.sort(np.concatenate(picked))


@dataclass
class LMEvaluation:
    """Held-out results of the causal-LM judge, fine-tuned and zero-shot, on the same pairs."""

    eval_rows: list[np.ndarray]                       # per fold: the evaluated pair indices
    scores: dict[str, list[np.ndarray]]               # judge -> per fold scores aligned with eval_rows
    per_fold: dict[str, list[dict[str, float]]]
    summary: dict[str, dict[str, float]]
    throughput: dict[str, float]
    train_loss: list[list[float]]
    judges: list[Any] = field(default_factory=list)   # the fine-tuned judge of each fold


def evaluate_causal_lm(texts_a: Sequence[str], texts_b: Sequence[str], labels: np.ndarray, folds: np.ndarray,
                       cfg: JudgeLMConfig, seed: int, fnr: float, threshold: float, zero_shot: bool = True,
                       checkpoint_root: str | None = None, model: Any = None, tokenizer: Any = None,
                       keep_judges: bool = False) -> LMEvaluation:
    """Fine-tune the causal-LM judge on all folds but one and score a balanced sample of the held-out fold, for
    the first `cfg.eval.folds` folds; the zero-shot model is scored on exactly the same pairs (other judges are
    scored on them afterwards, from the written pairs: `same_pairs_metrics`)."""
    import copy

    from deepprune.judges.causal_lm import CausalLMJudge, load_causal_lm

    labels, folds = np.asarray(labels), np.asarray(folds)
    if model is None:
        model, tokenizer = load_causal_lm(cfg.model_path, cfg.dtype, cfg.device)
    base = CausalLMJudge(cfg, seed, model, tokenizer)
    names = (["causal_lm"] if cfg.train.steps > 0 else []) + (["causal_lm_zeroshot"] if zero_shot else [])
    out = LMEvaluation([], {n: [] for n in names}, {n: [] for n in names}, {}, {}, [])
    train_tp = score_tp = None
    eval_folds = sorted(set(folds.tolist()))[: cfg.eval.folds]
    # each fold's own seeded draw, as before: drawing them all first changes nothing
    tests = [balanced_subset(labels, np.flatnonzero(folds == fold), cfg.eval.pairs_per_class,
                             np.random.default_rng(seed + fold)) for fold in eval_folds]
    step_pairs = cfg.train.grad_accum * cfg.train.batch_size
    # work in pairs: each optimizer step trains on step_pairs pairs, each judge scores each held-out pair once
    with track("fine-tuning and scoring", sum(cfg.train.steps * step_pairs + len(t) * len(names) for t in tests),
               "pairs") as progress:
        for fold, test in zip(eval_folds, tests):
            train = np.flatnonzero(folds != fold)
            out.eval_rows.append(test)
            ta, tb = [texts_a[i] for i in test], [texts_b[i] for i in test]
            fold_scores: dict[str, np.ndarray] = {}
            if cfg.train.steps > 0:
                judge = CausalLMJudge(cfg, seed + fold, copy.deepcopy(model), tokenizer)
                seen = {"step": 0, "tokens": 0}

                def on_step(step: int, _loss: float) -> None:  # a resumed run counts its checkpointed steps here
                    progress.advance((step - seen["step"]) * step_pairs, tokens=judge.training.tokens - seen["tokens"])
                    seen.update(step=step, tokens=judge.training.tokens)

                judge.fit_texts([texts_a[i] for i in train], [texts_b[i] for i in train], labels[train],
                                checkpoint_dir=f"{checkpoint_root}/fold{fold}" if checkpoint_root else None,
                                on_step=on_step)
                on_step(cfg.train.steps, 0.0)  # every step done (a fully checkpointed fold calls on_step never)
                fold_scores["causal_lm"] = judge.score_texts(ta, tb, progress=progress)
                out.train_loss.append(judge.train_log)
                train_tp, score_tp = _add_tp(train_tp, judge.training), _add_tp(score_tp, judge.scoring)
                if keep_judges:
                    out.judges.append(judge)
                del judge
            if zero_shot:
                fold_scores["causal_lm_zeroshot"] = base.score_texts(ta, tb, progress=progress)
            for name, scores in fold_scores.items():
                out.scores[name].append(scores)
                out.per_fold[name].append(judge_metrics(labels[test], scores, fnr, threshold))
    out.summary = {name: summarize_folds(rows) for name, rows in out.per_fold.items()}
    score_tp = _add_tp(score_tp, base.scoring)
    out.throughput = {
        "score_pairs_per_second": score_tp.pairs_per_second if score_tp else float("nan"),
        "score_tokens_per_pair": score_tp.tokens / score_tp.pairs if score_tp and score_tp.pairs else float("nan"),
        "train_pairs_per_second": train_tp.pairs_per_second if train_tp else float("nan"),
        "train_seconds": train_tp.seconds if train_tp else 0.0,
        "score_seconds": score_tp.seconds if score_tp else 0.0,
    }
    return out


def same_pairs_metrics(rows: Sequence[Mapping[str, Any]], scores: Mapping[tuple[str, str, str], Mapping[str, Any]],
                       names: Sequence[str], fnr: float, threshold: float) -> dict[str, dict[str, float]]:
    """Fold-summarised metrics of other judges on exactly the pairs another evaluation used (rows: pairs with
    problem_id, trace_a, trace_b, label and fold; scores: pair key -> {judge: score})."""
    out = {}
    for name in names:
        per_fold = []
        for fold in sorted({r["fold"] for r in rows}):
            mine = [r for r in rows if r["fold"] == fold]
            values = [scores[(r["problem_id"], r["trace_a"], r["trace_b"])].get(name) for r in mine]
            per_fold.append(judge_metrics([r["label"] for r in mine],
                                          [np.nan if v is None else v for v in values], fnr, threshold))
        if per_fold:
            out[name] = summarize_folds(per_fold)
    return out


def _add_tp(total: Any, more: Any) -> Any:
    from deepprune.judges.causal_lm import Throughput

    total = total or Throughput()
    return Throughput(total.pairs + more.pairs, total.seconds + more.seconds, total.tokens + more.tokens)


@dataclass
class AblationRow:
    """One judge variant at one truncation: held-out metrics over the grouped folds."""

    strategy: str
    k: int
    variant: str
    summary: dict[str, float]
    oof_scores: np.ndarray | None = None  # every pair's held-out score, in the pairs' order


def ablation_cell(data: PairData, cfg: JudgeConfig, variants: Sequence[str], encoder: SentenceEncoder, seed: int,
                  prefix: str) -> list[AblationRow]:
    """One cell of the truncation ablation (Figure 4, Table 1): every listed variant cross-validated on the pairs cut
    at `prefix` (a prefix name of the embed stage), its fold summary with its AUROC within a problem. Every cell has
    the same pairs and folds; only the truncation changes."""
    from deepprune.truncate import parse_prefix_name

    sub = cfg.model_copy(update={"variants": {v: cfg.variants[v] for v in variants}, "primary": variants[0],
                                 "baseline": variants[0]})
    strategy, k = parse_prefix_name(prefix)
    rows = []
    for variant, result in cross_validate(data, sub, encoder, seed).items():
        # what DeepPrune's clustering can use of the scores: their ranking inside one problem
        within, n_problems = within_problem_auroc(data.labels, result.oof_scores, data.problems)
        rows.append(AblationRow(strategy, k, variant, {**result.summary, AUROC_WITHIN_PROBLEM: within,
                                                       AUROC_WITHIN_PROBLEM_COUNT: n_problems}, result.oof_scores))
    return rows
