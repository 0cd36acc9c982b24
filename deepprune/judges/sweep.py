"""Focal-loss sweeps: a grid over a trainable judge's recipe (loss, alpha, gamma, oversampling and its ratio, or
any other train key), expanded into distinct points, each evaluated on the same grouped folds."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from deepprune.config import JudgeConfig, JudgeLMConfig, SweepConfig, TrainConfig, VariantConfig

# Encoder judges keep loss and oversampling on the variant; everything else is a judge.train key.
VARIANT_KEYS = ("loss", "oversample")


@dataclass(frozen=True)
class SweepPoint:
    """One distinct recipe: its name (stable, readable), and the settings that define it."""

    name: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def as_dict(self) -> dict[str, Any]:
        return dict(self.settings)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(tree.get(key), dict):
            raise KeyError(dotted)
        tree = tree[key]
    if leaf not in tree:
        raise KeyError(dotted)
    tree[leaf] = value


def _unused(settings: Mapping[str, Any], defaults: Mapping[str, Any], kind: str | None) -> set[str]:
    """The top-level train keys the point's recipe ignores (evaluate.unused_train_keys, the rule variant_recipe
    uses): a point's own loss, oversampling and fine-tuning switch, or the defaults'."""
    from deepprune.judges.evaluate import unused_train_keys

    value = lambda key: settings.get(key, defaults.get(key))  # noqa: E731
    return unused_train_keys(kind, value("loss"), bool(value("oversample")), bool(value("finetune_encoder")))


def _effective(settings: dict[str, Any], defaults: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """Settings with the keys their recipe ignores reset to their defaults (alpha and gamma under cross-entropy,
    the ratio without oversampling, ...). Points equal after this are the same experiment."""
    unused = _unused(settings, defaults, kind)
    return {key: defaults.get(key) if key.split(".")[0] in unused else value for key, value in settings.items()}


def _point_name(settings: Mapping[str, Any]) -> str:
    """A readable name that does not depend on the grid's key order: 'focal_a0.25_g2.0_os_r1.0', 'ce_noos'."""
    short = {"loss": "", "focal.alpha": "a", "focal.gamma": "g", "oversample": "os", "oversample_ratio": "r"}
    order = list(short) + sorted(k for k in settings if k not in short)
    parts = []
    for key in (k for k in order if k in settings):
        value = settings[key]
        if value is None:
            continue
        label = short.get(key, key.replace(".", "_") + "=")
        if isinstance(value, bool):
            parts.append(label if value else f"no{label}")
        else:
            parts.append(f"{label}{value}")
    return "_".join(parts) or "base"


def expand_grid(sweep: SweepConfig, base: dict[str, Any], kind: str | None) -> list[SweepPoint]:
    """The grid's distinct points, in grid order. `base` is the flat default recipe the grid varies, `kind` the
    swept judge's (swept_kind); a point is named by the keys its recipe reads."""
    keys = list(sweep.grid)
    seen: set[tuple[tuple[str, Any], ...]] = set()
    points = []
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        settings = _effective(dict(zip(keys, values)), base, kind)
        unused = _unused(settings, base, kind)
        shown = {k: v for k, v in settings.items() if k.split(".")[0] not in unused}
        frozen = tuple(sorted(settings.items()))
        if frozen in seen:
            continue
        seen.add(frozen)
        points.append(SweepPoint(_point_name(shown), frozen))
    return points


def base_recipe(sweep: SweepConfig, judge: JudgeConfig, judge_lm: JudgeLMConfig) -> dict[str, Any]:
    """The flat default recipe of the swept judge (what a grid key falls back to)."""
    from deepprune.tracking import flatten

    if sweep.judge == "causal_lm":
        return flatten(judge_lm.train.model_dump())
    primary = judge.variants[judge.primary]
    return {**flatten(judge.train.model_dump()), "loss": primary.loss, "oversample": primary.oversample}


def swept_kind(sweep: SweepConfig, judge: JudgeConfig) -> str | None:
    """The kind of judge a sweep trains: the primary variant's (encoder, cross_encoder), or None for causal_lm."""
    return None if sweep.judge == "causal_lm" else judge.variants[judge.primary].kind


def grid_points(sweep: SweepConfig, judge: JudgeConfig, judge_lm: JudgeLMConfig) -> list[SweepPoint]:
    """The sweep's distinct points over the swept judge's default recipe."""
    return expand_grid(sweep, base_recipe(sweep, judge, judge_lm), swept_kind(sweep, judge))


def encoder_recipe(point: SweepPoint, judge: JudgeConfig) -> tuple[VariantConfig, JudgeConfig]:
    """The variant and judge config of one encoder sweep point: the primary variant (its kind and features) with
    the point's loss, oversampling and train keys; a bad key names `sweep.grid.<key>`."""
    settings = point.as_dict
    train = judge.train.model_dump()
    variant = {**judge.variants[judge.primary].model_dump(), "loss": "ce", "oversample": False}
    for key, value in settings.items():
        if key in VARIANT_KEYS:
            variant[key] = value
            continue
        try:
            _set(train, key, value)
        except KeyError:
            raise KeyError(f"sweep.grid.{key}: not a judge.train key (or one of {VARIANT_KEYS})") from None
    try:
        var_cfg = VariantConfig.model_validate(variant)
        cfg = judge.model_copy(update={"train": TrainConfig.model_validate(train), "variants": {point.name: var_cfg},
                                       "primary": point.name, "baseline": point.name})
    except ValidationError as exc:
        raise ValueError(f"sweep point {point.name}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return var_cfg, cfg


def lm_recipe(point: SweepPoint, judge_lm: JudgeLMConfig) -> JudgeLMConfig:
    """The judge_lm config of one causal-LM sweep point."""
    from deepprune.config import LMTrainConfig

    train = judge_lm.train.model_dump()
    for key, value in point.as_dict.items():
        try:
            _set(train, key, value)
        except KeyError:
            raise KeyError(f"sweep.grid.{key}: not a judge_lm.train key") from None
    try:
        return judge_lm.model_copy(update={"train": LMTrainConfig.model_validate(train)})
    except ValidationError as exc:
        raise ValueError(f"sweep point {point.name}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def best_point(results: Sequence[tuple[SweepPoint, Mapping[str, float]]],
               metric: str) -> tuple[SweepPoint, Mapping[str, float]] | None:
    """The point with the highest mean metric over folds (ties: the smaller spread, then grid order).

    An unknown metric name is an error. None when the metric is undefined (NaN) on every point: the corpus's pairs
    have one class only (every trace agrees, or none has an answer), so nothing ranks the points and no point is
    "best"; the caller says so instead of crowning the first grid point."""
    import math

    values = [summary.get(metric) for _, summary in results]
    if all(v is None for v in values):
        known = sorted({k for _, summary in results for k in summary})
        raise ValueError(f"sweep.metric {metric!r} is in no sweep point's summary; they hold {', '.join(known)}")
    if not any(v is not None and math.isfinite(v) for v in values):
        return None

    def key(item: tuple[int, tuple[SweepPoint, Mapping[str, float]]]) -> tuple[float, float, int]:
        index, (_, summary) = item
        value = summary.get(metric, float("nan"))
        spread = summary.get(f"{metric}_std", 0.0)
        return (-(value if math.isfinite(value) else -math.inf), spread, index)

    return min(enumerate(results), key=key)[1]
