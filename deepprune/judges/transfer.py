"""Transfer across corpora, the revised paper's headline protocol (arXiv 2510.08483 v2: a judge trained on other
data reaches AUROC 0.7072 on reasoning models it never saw): every judge variant the judge stage fitted on all pairs
of one corpus scores every pair of another, for every ordered pair of corpora.

One matrix per variant, rows the training corpus, columns the test corpus. The diagonal is in-distribution: the
judge stage's out-of-fold scores (grouped folds, so a problem is never scored by a judge that saw it), pooled over
folds like every other cell. A judge that does not train (SBERT cosine) scores a corpus the same whatever the row:
its row is the column's own scores, shown so a transfer cell can be read against the untrained baseline."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deepprune.metrics import judge_metrics

IN_DISTRIBUTION, TRANSFER, UNTRAINED = "out-of-fold", "transfer", "untrained"


@dataclass(frozen=True)
class TransferCell:
    """One variant trained on `train`, scored on every pair of `test`."""

    train: str
    test: str
    variant: str
    kind: str                      # IN_DISTRIBUTION, TRANSFER or UNTRAINED
    metrics: dict[str, float]
    scores: np.ndarray             # P(same answer) of every pair of `test`, in the label stage's pair order

    @property
    def name(self) -> str:
        return cell_name(self.train, self.test)


def cell_name(train: str, test: str) -> str:
    """'math__date': trained on math, scored on date (the metric key's middle part)."""
    return f"{train}__{test}"


def transfer_matrix(corpora: Sequence[str], variants: Mapping[str, bool], labels: Mapping[str, np.ndarray],
                    out_of_fold: Mapping[str, Mapping[str, np.ndarray]],
                    score: Callable[[str, str, str], np.ndarray], fnr: float, threshold: float) -> list[TransferCell]:
    """Every (train, test, variant) cell. `variants` maps a name to whether it trains; `out_of_fold[corpus][variant]`
    are the judge stage's held-out scores of the corpus's pairs; `score(train, variant, test)` scores every pair of
    `test` with the variant fitted on all of `train`."""
    cells = []
    for train in corpora:
        for test in corpora:
            for variant, trains in variants.items():
                if train == test or not trains:
                    kind, scores = (IN_DISTRIBUTION if train == test else UNTRAINED), out_of_fold[test][variant]
                else:
                    kind, scores = TRANSFER, score(train, variant, test)
                scores = np.asarray(scores, dtype=float)
                if scores.shape != labels[test].shape:
                    raise ValueError(f"transfer {cell_name(train, test)}/{variant}: {scores.shape[0]} scores for "
                                     f"{labels[test].shape[0]} pairs")
                cells.append(TransferCell(train, test, variant, kind,
                                          judge_metrics(labels[test], scores, fnr, threshold), scores))
    return cells
