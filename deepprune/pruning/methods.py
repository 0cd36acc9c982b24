"""Pruning methods on one problem, replayed from complete traces (DESIGN.md sections 1 and 4).

Every method sees the N traces of one draw in arrival order and returns an Outcome with the same
accounting: a trace that is stopped after its prefix costs min(length, k) tokens; a trace that runs to the
end costs its full length; a trace that never starts (ESC's unsampled windows) costs nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Problem:
    """What the simulator knows of one problem's recorded traces."""

    problem_id: str
    classes: np.ndarray  # answer class per trace (equivalent answers share one; < 0: no answer, a class alone)
    correct: np.ndarray  # bool per trace
    lengths: np.ndarray  # tokens per complete trace
    judge: np.ndarray | None = None  # n x n judge scores P(same answer), symmetric
    cosine: np.ndarray | None = None  # n x n SBERT cosine of the prefixes
    confidence: tuple[np.ndarray, ...] | None = None  # per trace, per token: -mean top-k logprob (DeepConf)

    @property
    def n(self) -> int:
        return len(self.lengths)


@dataclass(frozen=True)
class Outcome:
    """One method on one problem and one draw."""

    correct: bool
    tokens: int
    completed: int
    judge_calls: int = 0
    clusters: int = 0


def vote(problem: Problem, members: Sequence[int], weights: Sequence[float] | None = None) -> int | None:
    """The winning trace of a majority vote over answer classes (its answer is the vote's answer).

    Traces with no answer never win unless nothing else is there. Ties go to the class whose member finished
    first (shortest trace), then to the earliest arrival, so results are deterministic (DESIGN.md section 4).
    """
    if not members:
        return None
    weights = [1.0] * len(members) if weights is None else list(weights)
    score: Counter[int] = Counter()
    first: dict[int, tuple[int, int]] = {}
    for pos, (idx, w) in enumerate(zip(members, weights)):
        cls = int(problem.classes[idx])
        if cls < 0:
            continue
        score[cls] += w
        key = (int(problem.lengths[idx]), pos)
        if cls not in first or key < first[cls]:
            first[cls] = key
    if not score:
        return members[0]
    best = max(score, key=lambda c: (score[c], -first[c][0], -first[c][1]))
    return next(i for i in members if problem.classes[i] == best)


def _outcome(problem: Problem, completed: Sequence[int], prefixed: Sequence[int], voters: Sequence[int], k: int,
             calls: int = 0, clusters: int = 0, weights: Sequence[float] | None = None) -> Outcome:
    winner = vote(problem, voters, weights)
    tokens = int(problem.lengths[list(completed)].sum()) + int(np.minimum(problem.lengths[list(prefixed)], k).sum())
    return Outcome(correct=bool(winner is not None and problem.correct[winner]), tokens=tokens,
                   completed=len(completed), judge_calls=calls, clusters=clusters)


def cons_at_n(problem: Problem, order: Sequence[int], k: int) -> Outcome:
    """Self-consistency: every trace runs to the end; majority vote by answer equivalence."""
    return _outcome(problem, order, [], order, k)


def greedy_cluster(order: Sequence[int], sim: np.ndarray | Callable[[int, list[int]], np.ndarray], tau: float,
                   r: int = 1, max_clusters: int | None = None) -> tuple[list[list[int]], int]:
    """DeepPrune's online clustering: each arriving trace joins the best cluster if its mean score against up to r
    of the cluster's members exceeds tau (or the cap on clusters is reached), else it seeds a new cluster.

    Ties go to the larger cluster, then the older. `sim` is a score matrix or a function (trace, members) ->
    scores that calls a judge on demand. Returns the clusters (seed first) and the judge calls made.
    """
    score_of = sim if callable(sim) else (lambda i, members: sim[i, members])
    clusters: list[list[int]] = []
    calls = 0
    for idx in order:
        best, best_key = -1, None
        for c_idx, cluster in enumerate(clusters):
            members = cluster[:r]
            score = float(np.mean(score_of(idx, members)))
            calls += len(members)
            key = (score, len(cluster), -c_idx)
            if best_key is None or key > best_key:
                best, best_key = c_idx, key
        if best >= 0 and (best_key[0] > tau or (max_clusters is not None and len(clusters) >= max_clusters)):
            clusters[best].append(idx)
        else:
            clusters.append([idx])
    return clusters, calls


def _largest(clusters: list[list[int]]) -> list[int]:
    return max(enumerate(clusters), key=lambda item: (len(item[1]), -item[0]))[1]


VOTES = ("all_completed", "largest_cluster")


def cluster_and_vote(problem: Problem, order: Sequence[int], sim: np.ndarray, k: int, tau: float, r: int,
                     q: int, max_clusters: int | None, vote_over: str = "all_completed") -> Outcome:
    """Greedy clustering on a similarity; every cluster's seed runs to the end, q members of the largest cluster
    resume; then a majority vote over every completed trace (`all_completed`: with tau = 1 nothing is pruned
    and this is cons@N) or over the largest cluster's completed members only (`largest_cluster`)."""
    clusters, calls = greedy_cluster(order, sim, tau, r, max_clusters)
    largest = _largest(clusters)
    resumed = largest[1:1 + q]
    completed = [c[0] for c in clusters] + resumed
    done = set(completed)
    prefixed = [i for i in order if i not in done]
    if vote_over not in VOTES:
        raise ValueError(f"unknown vote {vote_over!r}; known: {', '.join(VOTES)}")
    voters = completed if vote_over == "all_completed" else [largest[0], *resumed]
    return _outcome(problem, completed, prefixed, voters, k, calls, len(clusters))


def deepprune(problem: Problem, order: Sequence[int], k: int, tau: float, r: int = 1, q: int = 2,
              max_clusters: int | None = None, vote_over: str = "all_completed") -> Outcome:
    """DeepPrune with the trained judge's scores."""
    if problem.judge is None:
        raise ValueError(f"problem {problem.problem_id}: no judge scores")
    return cluster_and_vote(problem, order, problem.judge, k, tau, r, q, max_clusters, vote_over)


def sbert_clustering(problem: Problem, order: Sequence[int], k: int, tau: float, r: int = 1, q: int = 2,
                     max_clusters: int | None = None, vote_over: str = "all_completed") -> Outcome:
    """The same greedy clustering on SBERT cosine of the prefixes (the Slim-SC idea; the paper's ablation)."""
    if problem.cosine is None:
        raise ValueError(f"problem {problem.problem_id}: no cosine scores")
    return cluster_and_vote(problem, order, problem.cosine, k, tau, r, q, max_clusters, vote_over)


def oracle(problem: Problem, order: Sequence[int], k: int) -> Outcome:
    """Clusters by the true final answers: the first trace of each answer runs, every other stops at its prefix;
    the answer is cons@N's. The floor of tokens for this scheme at cons@N's accuracy."""
    seen: set[int] = set()
    seeds = []
    for idx in order:
        cls = int(problem.classes[idx])
        if cls < 0 or cls not in seen:
            seeds.append(idx)
            seen.add(cls)
    prefixed = [i for i in order if i not in set(seeds)]
    winner = vote(problem, list(order))
    tokens = int(problem.lengths[seeds].sum()) + int(np.minimum(problem.lengths[prefixed], k).sum())
    return Outcome(correct=bool(winner is not None and problem.correct[winner]), tokens=tokens,
                   completed=len(seeds), clusters=len(seeds))


def random_pruning(problem: Problem, order: Sequence[int], k: int, budget: int, rng: np.random.Generator) -> Outcome:
    """Random traces run to the end while the total stays within budget (DeepPrune's tokens); the rest stop at
    their prefix. At least one trace completes."""
    shuffled = [order[i] for i in rng.permutation(len(order))]
    completed: list[int] = []
    prefix_cost = int(np.minimum(problem.lengths[list(order)], k).sum())
    spent = prefix_cost
    for idx in shuffled:
        extra = int(problem.lengths[idx]) - min(int(problem.lengths[idx]), k)
        if completed and spent + extra > budget:
            continue
        completed.append(idx)
        spent += extra
    done = set(completed)
    return _outcome(problem, completed, [i for i in order if i not in done], completed, k)


def esc(problem: Problem, order: Sequence[int], k: int, window: int) -> Outcome:
    """Early-stopping self-consistency: sample windows of traces; stop once a window's answers all agree."""
    sampled: list[int] = []
    for start in range(0, len(order), window):
        chunk = list(order[start:start + window])
        sampled += chunk
        classes = {int(problem.classes[i]) for i in chunk}
        if len(classes) == 1 and min(classes) >= 0:
            break
    return _outcome(problem, sampled, [], sampled, k)


def trace_confidence(token_conf: np.ndarray, window: int) -> np.ndarray:
    """Sliding-window group confidence: at each position, the mean token confidence over the last `window`
    tokens (over all tokens so far while fewer than `window` exist)."""
    csum = np.cumsum(np.asarray(token_conf, dtype=float))
    pos = np.arange(1, len(csum) + 1)
    lagged = np.concatenate([np.zeros(window), csum[:-window]]) if len(csum) > window else np.zeros(len(csum))
    lagged = lagged[: len(csum)]
    counts = np.minimum(pos, window)
    return (csum - lagged) / counts


def lowest_group_confidence(token_conf: np.ndarray, window: int) -> float:
    """DeepConf's trace score: the lowest sliding-window confidence."""
    return float(trace_confidence(token_conf, window).min()) if len(token_conf) else float("-inf")


def deepconf_threshold(scores: Sequence[float], eta: float) -> float:
    """The (100 - eta)-th percentile of warm-up scores: DeepConf-low (eta = 10) keeps the top 10%,
    DeepConf-high (eta = 90) the top 90%."""
    return float(np.percentile(np.asarray(scores, dtype=float), 100.0 - eta))


def deepconf_offline(problem: Problem, order: Sequence[int], k: int, eta: float, window: int,
                     weighted: bool = True) -> Outcome:
    """All traces complete; the top eta% by lowest group confidence vote (confidence-weighted)."""
    assert problem.confidence is not None
    scores = np.array([lowest_group_confidence(problem.confidence[i], window) for i in order])
    keep = [i for i, s in zip(order, scores) if s >= deepconf_threshold(scores, eta)]
    weights = [lowest_group_confidence(problem.confidence[i], window) for i in keep] if weighted else None
    return _outcome(problem, order, [], keep, k, weights=weights)


def deepconf_online(problem: Problem, order: Sequence[int], k: int, eta: float, window: int, warmup: int,
                    weighted: bool = True) -> Outcome:
    """W warm-up traces complete and set the threshold; every later trace stops the moment its window confidence
    falls below it (costing the tokens generated so far); survivors and warm-up traces vote."""
    assert problem.confidence is not None
    warm = list(order[:warmup])
    threshold = deepconf_threshold([lowest_group_confidence(problem.confidence[i], window) for i in warm], eta)
    tokens = int(problem.lengths[warm].sum())
    voters = list(warm)
    for idx in order[warmup:]:
        conf = trace_confidence(problem.confidence[idx], window)
        below = np.flatnonzero(conf < threshold)
        if len(below):
            tokens += int(below[0]) + 1
        else:
            tokens += int(problem.lengths[idx])
            voters.append(idx)
    weights = [lowest_group_confidence(problem.confidence[i], window) for i in voters] if weighted else None
    winner = vote(problem, voters, weights)
    return Outcome(correct=bool(winner is not None and problem.correct[winner]), tokens=tokens,
                   completed=len(voters))
