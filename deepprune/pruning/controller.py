"""The pruning controller: the one implementation of cons@N, DeepPrune (judge or SBERT clustering), DeepConf
(online and offline), ESC, random pruning at a budget, and two references that read every trace to the end:
DeepPrune with a perfect judge, and the oracle (DESIGN.md sections 1 and 4).

It drives any engine through `generate(jobs) -> results` (deepprune.sampling.engines: GenJob, GenResult, an
`on_token` callback that may stop a trace, and `resume` continuations): a live engine (transformers, an
OpenAI-compatible server) in the online stage, the replay engine (deepprune.pruning.replay) over recorded traces
in the prune stage and the tests. So a method means the same thing wherever it runs.

One rule for every path:
- **Token accounting** is what the engine reports: every trace writes its k-token prefix (min(length, k)), a
  trace that runs on costs its full length, a stopped trace what it wrote, a trace never started nothing.
- **A trace that finishes within its k-token prefix has completed**: it votes and costs its length (< k). It
  still takes part in clustering (its prefix is its whole text), but nothing is left to prune or resume.
- **A prefix cut by the text** (the first k reasoning words) costs each trace what it wrote until that prefix was
  complete (`Task.prefix_tokens`, measured per trace by the label stage); a trace that ends first has completed.
- **Resumed members**: the q members of the largest cluster that are resumed are its first q members after the
  seed (arrival order) that have not finished already.
- **Latency** is the sequential depth: the longest chain of tokens generated one after another on the problem, with
  every trace of a round decoded in parallel (one decoding step writes one token of each). A method's rounds run
  one after another: cons@N and DeepConf offline are one round (the longest trace); DeepPrune a prefix round then
  a resume round; ESC one round per window; DeepConf online its warm-up, then the rest. Token counts say what a
  method costs; depth says how long a user waits for its answer.
- **Vote** (`all_completed`): every trace that ran to the end (finished or hit the token budget) votes, so
  tau = 1 is cons@N; `largest_cluster`: only the largest cluster's completed members vote; `cluster_size`: every
  completed trace votes with its cluster's size shared evenly among the cluster's completed members, so a pruned
  trace votes through the members of its cluster that ran to the end (the judge predicted they agree): with a
  perfect judge and no cluster cap its counts are cons@N's (a tie still goes to the first finisher among the
  voters, who may not include cons@N's first finisher); a cluster none of whose members ran to the end (a live
  engine's abort) has no vote. Ties between answers go to the class whose member
  finished first (fewest tokens), then to the earliest arrival.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, get_args

import numpy as np

from deepprune.answers import AnswerSpec, answers_equivalent, extract_answer, is_correct
from deepprune.config import VoteRule
from deepprune.pruning.confidence import ConfidenceStop, deepconf_threshold, token_confidence, trace_score
from deepprune.sampling.engines import GenJob, GenResult

RESUME_SEED_OFFSET = 1_000_003  # an engine without exact resume samples a continuation from seed_i + this
VOTES = get_args(VoteRule)
METHOD_KINDS = ("cons", "deepprune", "sbert", "settle", "random", "esc", "oracle", "perfect_judge", "deepconf_offline",
                "deepconf_online")  # and the prune stage's "tuned": DeepPrune at a tau per fold (pruning/simulate.py)
RAN_TO_END = ("finished", "length")

# (seeds of the traces, their prefix texts) -> n x n P(same answer); the replay looks scores up by seed,
# a live judge scores the texts
Similarity = Callable[[Sequence[int], Sequence[str]], np.ndarray]


class Engine(Protocol):
    """What the controller needs of an engine (TransformersEngine, OpenAIEngine, ReplayEngine)."""

    def generate(self, jobs: Sequence[GenJob]) -> list[GenResult]: ...


class Grader:
    """Answers of one problem: extraction, equivalence classes and grading, cached (a replay asks again and again)."""

    def __init__(self, spec: AnswerSpec, gold: str | None) -> None:
        self.spec, self.gold = spec, gold
        self._answers: dict[str, str | None] = {}
        self._reps: list[str] = []
        self._classes: dict[str, int] = {}
        self._correct: dict[str | None, bool | None] = {}

    def answer(self, text: str) -> str | None:
        if text not in self._answers:
            self._answers[text] = extract_answer(text, self.spec)
        return self._answers[text]

    def know(self, text: str, answer: str | None) -> None:
        """Record an answer already extracted (the sample stage's, for recorded traces)."""
        self._answers[text] = answer

    def answer_class(self, answer: str | None) -> int:
        """Equivalent answers share a class (first representative wins); no answer is -1 (never agrees)."""
        if answer is None:
            return -1
        cls = self._classes.get(answer)
        if cls is None:
            cls = next((i for i, rep in enumerate(self._reps) if answers_equivalent(answer, rep, self.spec)), None)
            if cls is None:
                self._reps.append(answer)
                cls = len(self._reps) - 1
            self._classes[answer] = cls
        return cls

    def correct(self, answer: str | None) -> bool | None:
        if answer not in self._correct:
            self._correct[answer] = is_correct(answer, self.gold, self.spec)
        return self._correct[answer]


@dataclass(frozen=True)
class Task:
    """One problem for the controller: trace j of the draw is GenJob(prompt, max_tokens, seeds[j]), in arrival order."""

    problem_id: str
    prompt: str
    seeds: tuple[int, ...]
    grader: Grader
    max_tokens: int
    # What each trace's prefix costs when the judge's cut depends on its text (a first-k-reasoning-words prefix,
    # measured by the label stage: deepprune.truncate.cut_prefixes), in arrival order; None for a trace that ends
    # before its prefix is complete. Without it (a live engine) every prefix is the method's k tokens.
    prefix_tokens: tuple[int | None, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)

    def prefix_budget(self, position: int, k: int) -> int:
        """Tokens the trace at `position` writes before the judge looks: k, or its own measured prefix; a trace whose
        prefix is never complete writes on to its end (max_tokens), finishing within its prefix round."""
        if self.prefix_tokens is None:
            return min(k, self.max_tokens)
        cut = self.prefix_tokens[position]
        return self.max_tokens if cut is None else min(cut, self.max_tokens)


@dataclass
class TraceRun:
    """What became of one trace of the draw."""

    seed: int
    text: str = ""
    n_tokens: int = 0
    stop_reason: str = "unsampled"  # finished | length | pruned | confidence_stop | budget | unsampled
    prefix_tokens: int = 0           # tokens written before the judge looked (clustering methods)
    answer: str | None = None
    correct: bool | None = None
    votes: bool = False
    logprobs: list[list[float]] | None = None


@dataclass
class Outcome:
    """One method on one problem."""

    method: str
    traces: list[TraceRun]
    answer: str | None
    correct: bool | None
    tokens: int
    wall_seconds: float = 0.0
    judge_calls: int = 0
    judge_seconds: float = 0.0
    clusters: list[list[int]] = field(default_factory=list)  # positions in arrival order, seed first
    depth: int = 0      # sequential depth in tokens (module docstring: latency)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return sum(t.stop_reason in RAN_TO_END for t in self.traces)

    @property
    def started(self) -> int:
        return sum(t.stop_reason != "unsampled" for t in self.traces)


@dataclass(frozen=True)
class MethodSpec:
    """One method: a kind from METHOD_KINDS and its settings."""

    name: str
    kind: str
    settings: Mapping[str, float | int | str | bool | None] = field(default_factory=dict)


def stable_seed(name: str) -> int:
    """A seed from a name that does not change between processes (Python's hash() does)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


# ---------------------------------------------------------------------------------------------------------------
def _reason(result: GenResult) -> str:
    return {"stop": "finished", "cancelled": "confidence_stop"}.get(result.finish_reason, result.finish_reason)


def _round(results: Sequence[GenResult]) -> int:
    """Depth of one parallel round: its longest generation."""
    return max((r.n_tokens for r in results), default=0)


def _start(engine: Engine, task: Task, positions: Sequence[int], max_tokens: int | Callable[[int], int],
           traces: list[TraceRun], on_token: Callable[[int], Callable | None] | None = None) -> list[GenResult]:
    """Generate the traces at `positions` from scratch, up to max_tokens each (or max_tokens(position))."""
    budget = max_tokens if callable(max_tokens) else (lambda p: max_tokens)
    jobs = [GenJob(task.prompt, budget(p), task.seeds[p], on_token=on_token(p) if on_token else None)
            for p in positions]
    results = engine.generate(jobs)
    for p, res in zip(positions, results):
        t = traces[p]
        t.text, t.n_tokens, t.stop_reason, t.logprobs = res.text, res.n_tokens, _reason(res), res.logprobs
    return results


def _paused(task: Task, position: int, k: int, result: GenResult) -> bool:
    """Whether the trace at `position` paused at its prefix: it did not finish, and (a prefix cut by the text) it
    wrote its whole measured prefix. A trace whose prefix was never complete ran to its end in the prefix round,
    also when its record ends at a token limit (`length`): it has completed, as it would live."""
    if result.finish_reason == "stop":
        return False
    return task.prefix_tokens is None or result.n_tokens >= task.prefix_budget(position, k)


def _resume(engine: Engine, task: Task, items: Sequence[tuple[int, GenResult, int]], traces: list[TraceRun]) -> list[GenResult]:
    """Continue paused traces: (position, the result that paused it, token budget of the continuation)."""
    jobs = [GenJob(task.prompt + traces[p].text, budget, task.seeds[p] + RESUME_SEED_OFFSET, resume=paused.continuation)
            for p, paused, budget in items]
    results = engine.generate(jobs)
    for (p, _, _), res in zip(items, results):
        t = traces[p]
        t.text, t.n_tokens, t.stop_reason = t.text + res.text, t.n_tokens + res.n_tokens, _reason(res)
        if t.logprobs is not None and res.logprobs is not None:
            t.logprobs = t.logprobs + res.logprobs
    return results


def vote(task: Task, traces: Sequence[TraceRun], voters: Sequence[int],
         weights: Sequence[float] | None = None) -> int | None:
    """The position of the winning trace of a (weighted) majority vote over answer classes.

    Traces with no answer never win unless nothing else is there. Ties go to the class whose member finished
    first (fewest tokens), then to the earliest arrival, so results are deterministic (DESIGN.md section 4)."""
    if not voters:
        return None
    weights = [1.0] * len(voters) if weights is None else list(weights)
    score: dict[int, float] = {}
    first: dict[int, tuple[int, int]] = {}
    rep: dict[int, int] = {}
    for p, w in zip(voters, weights):
        cls = task.grader.answer_class(traces[p].answer)
        if cls < 0:
            continue
        score[cls] = score.get(cls, 0.0) + w
        key = (traces[p].n_tokens, p)
        if cls not in first or key < first[cls]:
            first[cls], rep[cls] = key, p
    if not score:
        return voters[0]
    # rounded: shared cluster weights must tie exactly, as counts do (six members' 8/6 sum to 7.999999999999999)
    best = max(score, key=lambda c: (round(score[c], 9), -first[c][0], -first[c][1]))
    return rep[best]


def _finish(method: str, task: Task, traces: list[TraceRun], voters: Sequence[int], start: float,
            weights: Sequence[float] | None = None, **fields) -> Outcome:
    for p in voters:
        traces[p].votes = True
    grader = task.grader
    for t in traces:  # only a trace that ran to the end has a final answer
        if t.stop_reason in RAN_TO_END:
            t.answer = grader.answer(t.text)
            t.correct = grader.correct(t.answer)
        else:
            t.answer = t.correct = None
    winner = vote(task, traces, voters, weights)
    answer = traces[winner].answer if winner is not None else None
    return Outcome(method, traces, answer, grader.correct(answer) if winner is not None else None,
                   sum(t.n_tokens for t in traces), time.perf_counter() - start, **fields)


def _grade(task: Task, traces: Sequence[TraceRun], positions: Sequence[int]) -> None:
    for p in positions:
        traces[p].answer = task.grader.answer(traces[p].text)


# ---------------------------------------------------------------------------------------------------------------
def run_cons(engine: Engine, task: Task, name: str = "cons") -> Outcome:
    """cons@N: every trace runs to the end; majority vote by answer equivalence."""
    start = time.perf_counter()
    traces = [TraceRun(s) for s in task.seeds]
    depth = _round(_start(engine, task, range(task.n), task.max_tokens, traces))
    return _finish(name, task, traces, list(range(task.n)), start, depth=depth)


def greedy_cluster(order: Sequence[int], sim: np.ndarray, tau: float, r: int = 1,
                   max_clusters: int | None = None) -> tuple[list[list[int]], int]:
    """DeepPrune's online clustering: each arriving trace joins the best cluster if its mean score against up to r
    of the cluster's members exceeds tau (or the cap on clusters is reached), else it seeds a new cluster.

    Ties go to the larger cluster, then the older. `sim` is indexed by the values in `order`. Returns the clusters
    (seed first) and the judge calls made (one per member compared)."""
    clusters: list[list[int]] = []
    calls = 0
    for idx in order:
        best, best_key = -1, None
        row = sim[idx]
        for c_idx, cluster in enumerate(clusters):
            members = cluster[:r]
            score = float(row[members[0]]) if len(members) == 1 else float(np.mean(row[members]))
            calls += len(members)
            key = (score, len(cluster), -c_idx)
            if best_key is None or key > best_key:
                best, best_key = c_idx, key
        if best >= 0 and (best_key[0] > tau or (max_clusters is not None and len(clusters) >= max_clusters)):
            clusters[best].append(idx)
        else:
            clusters.append([idx])
    return clusters, calls


def _voters(vote_over: str, clusters: Sequence[Sequence[int]], largest: Sequence[int],
            completed: Sequence[int]) -> tuple[list[int], list[float] | None]:
    """Who votes after clustering, and with what weight (None: one vote each), as `vote_over` says."""
    if vote_over == "all_completed":
        return list(completed), None
    done = set(completed)
    if vote_over == "largest_cluster":
        return [p for p in largest if p in done], None
    voters, weights = [], []  # cluster_size: a cluster's weight is its size, shared by its completed members
    for cluster in clusters:
        members = [p for p in cluster if p in done]
        if not members:  # none ran to the end (a live engine's abort): the cluster has no vote
            continue
        voters += members
        weights += [len(cluster) / len(members)] * len(members)
    return voters, weights


def _largest(clusters: list[list[int]]) -> list[int]:
    return max(enumerate(clusters), key=lambda item: (len(item[1]), -item[0]))[1]


def run_clustering(engine: Engine, task: Task, k: int, similarity: Similarity, tau: float, r: int = 1, q: int = 2,
                   max_clusters: int | None = None, vote_over: str = "all_completed",
                   name: str | None = None) -> Outcome:
    """DeepPrune (a judge's similarity) or SBERT clustering (cosine): all N traces write their k-token prefix;
    greedy clustering in arrival order; cluster seeds and q unfinished members of the largest cluster resume
    from where they paused; the rest are pruned. Vote as `vote_over` says (module docstring)."""
    if vote_over not in VOTES:
        raise ValueError(f"unknown vote {vote_over!r}; known: {', '.join(VOTES)}")
    start = time.perf_counter()
    traces = [TraceRun(s) for s in task.seeds]
    first = _start(engine, task, range(task.n), lambda p: task.prefix_budget(p, k), traces)
    for t in traces:
        t.prefix_tokens = t.n_tokens
    judge_start = time.perf_counter()
    sim = similarity(task.seeds, [t.text for t in traces])
    judge_seconds = time.perf_counter() - judge_start
    clusters, calls = greedy_cluster(range(task.n), sim, tau, r, max_clusters)
    largest = _largest(clusters)
    paused = [p for p in range(task.n) if _paused(task, p, k, first[p])]
    open_ = {p for p in paused if traces[p].n_tokens < task.max_tokens}
    resumed = [p for p in largest[1:] if p in open_][:q]
    runs_on = [c[0] for c in clusters] + resumed
    for p in paused:
        if p not in runs_on:
            traces[p].stop_reason = "pruned"
    tails = _resume(engine, task, [(p, first[p], task.max_tokens - traces[p].n_tokens) for p in runs_on if p in open_],
                    traces)
    completed = [p for p in range(task.n) if traces[p].stop_reason in RAN_TO_END]
    voters, weights = _voters(vote_over, clusters, largest, completed)
    return _finish(name or f"deepprune_tau{tau:g}", task, traces, voters, start, weights, judge_calls=calls,
                   judge_seconds=judge_seconds, clusters=clusters, depth=_round(first) + _round(tails))


def run_settle(engine: Engine, task: Task, k: int, similarity: Similarity, tau: float, window: int, r: int = 1,
               q: int = 2, max_clusters: int | None = None, vote_over: str = "all_completed",
               name: str | None = None) -> Outcome:
    """DeepPrune in arriving windows, stopping once the clusters settle (ours; neither the paper nor its peers).

    Traces start `window` at a time. Each window writes its k-token prefixes and joins DeepPrune's greedy
    clustering of every trace so far (same judge, tau, r and cap); a trace that seeds a new cluster runs on at once,
    one that joins a cluster pauses. Sampling stops after the first window in which no trace seeds a new cluster
    (the very first trace excepted): the answers' clusters have settled, so later traces would most likely join
    them and be pruned after paying their prefix. Then, as in DeepPrune, q unfinished members of the largest cluster
    resume; the rest are pruned and traces never started cost nothing; the vote follows `vote_over`.

    Against DeepPrune it saves the prefixes of the traces never started; against ESC (windows of whole traces)
    only prefix rounds are sequential, since seeds run on alongside the next window, so its depth is the
    windows' prefix rounds plus the longest tail."""
    if vote_over not in VOTES:
        raise ValueError(f"unknown vote {vote_over!r}; known: {', '.join(VOTES)}")
    if window < 1:
        raise ValueError(f"settle window must be >= 1, got {window}")
    start = time.perf_counter()
    traces = [TraceRun(s) for s in task.seeds]
    first: dict[int, GenResult] = {}
    clusters: list[list[int]] = []
    calls, judge_seconds = 0, 0.0
    ends = [0] * task.n  # when each trace stops writing, in decoding steps from the start
    clock, upto = 0, 0
    runs_on = lambda p: _paused(task, p, k, first[p]) and traces[p].n_tokens < task.max_tokens  # noqa: E731
    for lo in range(0, task.n, window):
        chunk = list(range(lo, min(lo + window, task.n)))
        results = _start(engine, task, chunk, lambda p: task.prefix_budget(p, k), traces)
        for p, res in zip(chunk, results):
            first[p], traces[p].prefix_tokens = res, traces[p].n_tokens
        upto = chunk[-1] + 1
        judge_start = time.perf_counter()
        sim = similarity(task.seeds[:upto], [t.text for t in traces[:upto]])
        judge_seconds += time.perf_counter() - judge_start
        before = len(clusters)
        clusters, calls = greedy_cluster(range(upto), sim, tau, r, max_clusters)  # online: earlier clusters stay
        seeds = [c[0] for c in clusters[before:] if runs_on(c[0])]
        _resume(engine, task, [(p, first[p], task.max_tokens - traces[p].n_tokens) for p in seeds], traces)
        for p in chunk:
            ends[p] = clock + traces[p].n_tokens
        clock += _round(results)
        if len(clusters) - before - (lo == 0) == 0:
            break
    largest = _largest(clusters)
    seeds = {c[0] for c in clusters}
    paused = [p for p in range(upto) if p not in seeds and runs_on(p)]
    resumed = [p for p in largest[1:] if p in paused][:q]
    for p in paused:
        if p not in resumed:
            traces[p].stop_reason = "pruned"
    _resume(engine, task, [(p, first[p], task.max_tokens - traces[p].n_tokens) for p in resumed], traces)
    for p in resumed:  # resumed once sampling stopped, from where it paused
        ends[p] = clock + traces[p].n_tokens - traces[p].prefix_tokens
    completed = [p for p in range(upto) if traces[p].stop_reason in RAN_TO_END]
    voters, weights = _voters(vote_over, clusters, largest, completed)
    return _finish(name or f"settle_tau{tau:g}_w{window}", task, traces, voters, start, weights, judge_calls=calls,
                   judge_seconds=judge_seconds, clusters=clusters, depth=max(ends))


def run_perfect_judge(engine: Engine, task: Task, k: int, r: int = 1, q: int = 2, max_clusters: int | None = None,
                      vote_over: str = "all_completed", name: str = "deepprune_perfect_judge") -> Outcome:
    """DeepPrune as it is (greedy clustering, q resumed, the vote) with a perfect judge: a pair scores 1 when the
    two traces' final answers are equivalent and 0 otherwise (a trace with no answer agrees with none), which it
    knows by reading every trace to the end, as the oracle does. Not a method: a reference for DeepPrune when its
    clustering is right, so its distance to the oracle is the scheme's (which traces resume, how they vote). It is
    no ceiling on tokens: a trained judge that merges traces with different answers keeps fewer seeds and saves
    more. Replay only: it reads each trace twice, which a live engine would generate twice."""
    if getattr(engine, "identity", {}).get("engine") != "replay":
        raise ValueError("the perfect judge reads every recorded trace to the end: it runs on the replay engine only")
    whole = run_cons(engine, task)
    classes = np.array([task.grader.answer_class(t.answer) for t in whole.traces])
    agree = ((classes[:, None] == classes[None, :]) & (classes[:, None] >= 0)).astype(float)
    return run_clustering(engine, task, k, lambda seeds, texts: agree, 0.5, r, q, max_clusters, vote_over, name)


def run_oracle(engine: Engine, task: Task, k: int, name: str = "oracle") -> Outcome:
    """The floor of tokens for this scheme at cons@N's accuracy: it clusters by the true final answers (it reads
    every trace to the end to know them, which no online method can), so the first trace of each answer runs on
    and every other costs its prefix; its answer is cons@N's. Not a method: a bound."""
    start = time.perf_counter()
    whole = run_cons(engine, task)
    traces = [TraceRun(s) for s in task.seeds]
    seen: dict[int, int] = {}
    clusters: list[list[int]] = []
    for p, full in enumerate(whole.traces):
        cls = task.grader.answer_class(full.answer)
        t = traces[p]
        t.text, t.answer, t.correct, t.logprobs = full.text, full.answer, full.correct, full.logprobs
        cut = k if task.prefix_tokens is None else task.prefix_budget(p, k)
        if cls >= 0 and cls in seen:
            clusters[seen[cls]].append(p)
            if full.n_tokens >= cut:  # a trace that finishes within its prefix has completed anyway
                t.n_tokens, t.prefix_tokens, t.stop_reason = cut, cut, "pruned"
                t.answer = t.correct = None
                continue
        else:
            if cls >= 0:
                seen[cls] = len(clusters)
            clusters.append([p])
        t.n_tokens, t.prefix_tokens, t.stop_reason = full.n_tokens, min(full.n_tokens, cut), full.stop_reason
    for p, full in enumerate(whole.traces):
        traces[p].votes = full.votes and traces[p].stop_reason != "pruned"  # the answer is cons@N's all the same
    return Outcome(name, traces, whole.answer, whole.correct, sum(t.n_tokens for t in traces),
                   time.perf_counter() - start, clusters=clusters, depth=max(t.n_tokens for t in traces))


def run_random(engine: Engine, task: Task, k: int, budget: int, rng: np.random.Generator, name: str = "random") -> Outcome:
    """Random pruning at a token budget (DeepPrune's on this problem): all N traces write their prefix; then traces
    resume one at a time in a seeded random order, each allowed at most the budget left; one that the budget
    stops (`budget`) does not vote. The first resumed trace is never cut, so at least one completes."""
    start = time.perf_counter()
    traces = [TraceRun(s) for s in task.seeds]
    first = _start(engine, task, range(task.n), lambda p: task.prefix_budget(p, k), traces)
    for t in traces:
        t.prefix_tokens = t.n_tokens
    spent = sum(t.n_tokens for t in traces)
    open_ = [p for p in range(task.n) if _paused(task, p, k, first[p]) and traces[p].n_tokens < task.max_tokens]
    for p in open_:
        traces[p].stop_reason = "pruned"
    resumed_any = False
    tail = 0  # the resumed traces form one round: the budget could be split among them up front
    for i in rng.permutation(len(open_)):
        p = open_[int(i)]
        room = task.max_tokens - traces[p].n_tokens
        if resumed_any:
            if budget - spent <= 0:
                break
            room = min(room, budget - spent)
        res = _resume(engine, task, [(p, first[p], room)], traces)[0]
        spent += res.n_tokens
        tail = max(tail, res.n_tokens)
        if resumed_any and res.finish_reason == "length" and traces[p].n_tokens < task.max_tokens:
            traces[p].stop_reason = "budget"
        resumed_any = True
    completed = [p for p in range(task.n) if traces[p].stop_reason in RAN_TO_END]
    return _finish(name, task, traces, completed, start, extra={"budget": float(budget)}, depth=_round(first) + tail)


def run_esc(engine: Engine, task: Task, window: int, name: str = "esc") -> Outcome:
    """Early-stopping self-consistency (Li et al. 2024): sample windows of traces to the end; stop once every
    answer in a window agrees; majority vote over every trace sampled."""
    start = time.perf_counter()
    traces = [TraceRun(s) for s in task.seeds]
    sampled: list[int] = []
    depth = 0
    for lo in range(0, task.n, window):
        chunk = list(range(lo, min(lo + window, task.n)))
        depth += _round(_start(engine, task, chunk, task.max_tokens, traces))
        sampled += chunk
        _grade(task, traces, chunk)
        classes = {task.grader.answer_class(traces[p].answer) for p in chunk}
        if len(classes) == 1 and min(classes) >= 0:
            break
    return _finish(name, task, traces, sampled, start, depth=depth)


def _scores(traces: Sequence[TraceRun], positions: Sequence[int], window: int) -> dict[int, float]:
    if any(traces[p].logprobs is None for p in positions):
        raise ValueError("DeepConf needs per-token logprobs (sample.generation.top_logprobs > 0, or a corpus "
                         "that recorded them)")
    return {p: trace_score(token_confidence(traces[p].logprobs), window) for p in positions}


def run_deepconf_offline(engine: Engine, task: Task, eta: float, window: int, name: str = "deepconf_offline") -> Outcome:
    """DeepConf offline: every trace completes; the top eta% by trace score vote, weighted by the score."""
    start = time.perf_counter()
    traces = [TraceRun(s) for s in task.seeds]
    depth = _round(_start(engine, task, range(task.n), task.max_tokens, traces))
    scores = _scores(traces, range(task.n), window)
    threshold = deepconf_threshold(list(scores.values()), eta)
    keep = [p for p in range(task.n) if scores[p] >= threshold]
    return _finish(name, task, traces, keep, start, [scores[p] for p in keep], extra={"threshold": threshold},
                   depth=depth)


def _consensus(task: Task, traces: Sequence[TraceRun], voters: Sequence[int], weights: Sequence[float]) -> float:
    """The (weighted) share of the leading answer among the voters so far."""
    total: dict[int, float] = {}
    for p, w in zip(voters, weights):
        cls = task.grader.answer_class(traces[p].answer)
        if cls >= 0:
            total[cls] = total.get(cls, 0.0) + w
    whole = sum(weights)
    return max(total.values()) / whole if total and whole > 0 else 0.0


def run_deepconf_online(engine: Engine, task: Task, warmup: int, eta: float, window: int, consensus: float | None = None,
                        name: str = "deepconf_online") -> Outcome:
    """DeepConf online: W warm-up traces run to the end and set the threshold (the (100 - eta)-th percentile of
    their scores); every later trace is stopped at its first full window whose mean confidence falls below it
    (deepprune.pruning.confidence). Traces that ran to the end with a score at the threshold or above vote,
    weighted by their score (warm-up traces included, as in the reference). With `consensus` (e.g. 0.95), later
    traces run one at a time and sampling stops once the leading answer holds that share of the vote."""
    if warmup >= task.n:
        raise ValueError(f"DeepConf: {warmup} warm-up traces >= N = {task.n} would make it cons@N")
    start = time.perf_counter()
    traces = [TraceRun(s) for s in task.seeds]
    warm = list(range(warmup))
    depth = _round(_start(engine, task, warm, task.max_tokens, traces))
    scores = _scores(traces, warm, window)
    threshold = deepconf_threshold([scores[p] for p in warm], eta)
    rest = list(range(warmup, task.n))
    watch = lambda p: ConfidenceStop(threshold, window)  # noqa: E731
    stopped_by_consensus = 0.0
    if consensus is None:
        depth += _round(_start(engine, task, rest, task.max_tokens, traces, watch))
    else:
        _grade(task, traces, warm)
        for i, p in enumerate(rest):
            voters = [v for v in range(p) if traces[v].stop_reason in RAN_TO_END and scores.get(v, -np.inf) >= threshold]
            if voters and _consensus(task, traces, voters, [scores[v] for v in voters]) >= consensus:
                stopped_by_consensus = float(len(rest) - i)
                break
            depth += _round(_start(engine, task, [p], task.max_tokens, traces, watch))
            _grade(task, traces, [p])
            if traces[p].stop_reason in RAN_TO_END:
                scores.update(_scores(traces, [p], window))
    for p in rest:
        if traces[p].stop_reason in RAN_TO_END and p not in scores:
            scores.update(_scores(traces, [p], window))
    voters = [p for p in range(task.n) if traces[p].stop_reason in RAN_TO_END and scores[p] >= threshold]
    return _finish(name, task, traces, voters, start, [scores[p] for p in voters],
                   extra={"threshold": threshold, "stopped": float(sum(t.stop_reason == "confidence_stop" for t in traces)),
                          "unsampled_by_consensus": stopped_by_consensus}, depth=depth)


# ---------------------------------------------------------------------------------------------------------------
def run_method(spec: MethodSpec, engine: Engine, task: Task, k: int, similarities: Mapping[str, Similarity],
               rng: np.random.Generator | None = None, budgets: Mapping[str, int] | None = None) -> Outcome:
    """One method of METHOD_KINDS on one problem. `similarities` holds 'judge' (DeepPrune) and 'cosine' (SBERT);
    random pruning reads the budget of the method it matches from `budgets[f'{match}:{problem_id}']`."""
    s = spec.settings
    kind = spec.kind
    cap = None if s.get("max_clusters") is None else int(s["max_clusters"])  # the clustering methods' cluster cap
    if kind == "cons":
        return run_cons(engine, task, spec.name)
    if kind in ("deepprune", "sbert"):
        key = "judge" if kind == "deepprune" else "cosine"
        if key not in similarities:
            raise ValueError(f"{spec.name}: no {key} similarity for problem {task.problem_id}")
        return run_clustering(engine, task, k, similarities[key], float(s["tau"]), int(s.get("r", 1)),
                              int(s.get("q", 2)), cap, str(s.get("vote", "all_completed")), spec.name)
    if kind == "perfect_judge":
        return run_perfect_judge(engine, task, k, int(s.get("r", 1)), int(s.get("q", 2)), cap,
                                 str(s.get("vote", "all_completed")), spec.name)
    if kind == "settle":
        if "judge" not in similarities:
            raise ValueError(f"{spec.name}: no judge similarity for problem {task.problem_id}")
        return run_settle(engine, task, k, similarities["judge"], float(s["tau"]), int(s["window"]), int(s.get("r", 1)),
                          int(s.get("q", 2)), cap, str(s.get("vote", "all_completed")), spec.name)
    if kind == "random":
        key = f"{s['match']}:{task.problem_id}"
        if budgets is None or key not in budgets:
            raise ValueError(f"random pruning matches {s['match']!r}, which must run before it")
        return run_random(engine, task, k, budgets[key], rng if rng is not None else np.random.default_rng(0),
                          spec.name)
    if kind == "esc":
        return run_esc(engine, task, int(s["window"]), spec.name)
    if kind == "oracle":
        return run_oracle(engine, task, k, spec.name)
    if kind == "deepconf_offline":
        return run_deepconf_offline(engine, task, float(s["eta"]), int(s["window"]), spec.name)
    if kind == "deepconf_online":
        consensus = s.get("consensus")
        return run_deepconf_online(engine, task, int(s["warmup"]), float(s["eta"]), int(s["window"]),
                                   None if consensus is None else float(consensus), spec.name)
    raise ValueError(f"unknown method kind {kind!r}; known: {', '.join(METHOD_KINDS)}")
