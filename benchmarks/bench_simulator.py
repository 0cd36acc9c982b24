"""Throughput of the prune stage's simulator (the pruning controller over the replay engine) on synthetic traces,
for N = 8, 64 and 512.

    python benchmarks/bench_simulator.py [--problems 20] [--repeats 5] [--k 500]

Prints problem-simulations per second (median over repeats) for each method kind: DeepPrune with the judge's
scores looked up in a precomputed matrix (as the prune stage does) and with a real PairHead scoring every pair
from 384-d prefix embeddings (judge compute included), cons@N, the oracle, random pruning at DeepPrune's budget,
ESC, and DeepConf online streaming per-token logprobs through its stop rule (N = 8 and 64; traces of 200 to 4000
tokens). Also judge calls per problem against N x clusters: each arriving trace is compared once with each
existing cluster (r = 1), so the calls never exceed N x clusters.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from deepprune.answers import AnswerSpec
from deepprune.judges.encoder import PairHead, pair_features
from deepprune.pruning.controller import MethodSpec, run_method
from deepprune.pruning.replay import RecordedTrace
from deepprune.pruning.simulate import replay_corpus

SPEC = AnswerSpec(extractor="regex", pattern=r"ANS=(\d+)")


def synthetic_corpus(count: int, n: int, n_answers: int, rng: np.random.Generator, logprobs: bool, dim: int = 384):
    """N traces per problem with a few answers; embeddings cluster by answer; the judge matrix from a noisy truth."""
    recorded, gold, judge, embeddings = {}, {}, {}, {}
    for i in range(count):
        pid = f"q{i}"
        classes = rng.choice(n_answers, size=n, p=np.r_[0.7, np.full(n_answers - 1, 0.3 / (n_answers - 1))])
        lengths = rng.integers(200, 4000, size=n)
        centers = rng.normal(size=(n_answers, dim))
        emb = centers[classes] + 1.5 * rng.normal(size=(n, dim))
        embeddings[pid] = torch.from_numpy((emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32))
        same = (classes[:, None] == classes[None, :]).astype(float)
        scores = np.clip(0.15 + 0.7 * same + 0.15 * rng.normal(size=(n, n)), 0.01, 0.99)
        judge[pid], gold[pid] = (scores + scores.T) / 2, "0"
        recorded[pid] = [RecordedTrace(f"trace {j} ANS={c}", int(length), "stop",
                                       (-rng.uniform(0.1, 2.0, size=(length, 2))).tolist() if logprobs else None)
                         for j, (c, length) in enumerate(zip(classes, lengths))]
    problems, engine = replay_corpus(recorded, SPEC, gold, {"judge": judge})
    return problems, engine, embeddings


def head_similarity(head: PairHead, emb: torch.Tensor):
    """A live judge: the PairHead scores every pair of the draw from the prefixes' embeddings."""
    @torch.inference_mode()
    def similarity(seeds, texts) -> np.ndarray:
        e = emb[list(seeds)]
        n = len(seeds)
        return torch.sigmoid(head(pair_features(e.repeat_interleave(n, 0), e.repeat(n, 1)))).numpy().reshape(n, n)
    return similarity


def time_method(spec: MethodSpec, problems, engine, k: int, repeats: int, sims=None) -> tuple[float, list]:
    """Median problem-simulations per second over repeats, and the last repeat's outcomes."""
    rates, outs = [], []
    for rep in range(repeats):
        rng = np.random.default_rng(rep)
        tasks = [p.task(rng.permutation(p.n)) for p in problems]
        budgets = {}
        if spec.kind == "random":
            budgets = {f"{spec.settings['match']}:{p.problem_id}": sum(
                min(engine.records[(p.problem_id, i)].n_tokens, k) for i in range(p.n)) * 2 for p in problems}
        start = time.perf_counter()
        outs = [run_method(spec, engine, t, k, sims[p.problem_id] if sims else p.similarities, rng, budgets)
                for p, t in zip(problems, tasks)]
        rates.append(len(problems) / (time.perf_counter() - start))
    return statistics.median(rates), outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    head = PairHead(384, 128, 0.0).eval()
    rng = np.random.default_rng(0)
    methods = [MethodSpec("cons", "cons"), MethodSpec("oracle", "oracle"),
               MethodSpec("deepprune", "deepprune", {"tau": 0.5, "q": 2}),
               MethodSpec("random", "random", {"match": "deepprune"}), MethodSpec("esc", "esc", {"window": 4})]
    print(f"{'N':>5} {'method':<26} {'sims/s':>10} {'judge calls/problem':>20} {'N x clusters':>13}")
    for n in (8, 64, 512):
        problems, engine, emb = synthetic_corpus(args.problems, n, 6, rng, logprobs=False)
        for spec in methods:
            rate, outs = time_method(spec, problems, engine, args.k, args.repeats)
            calls = np.mean([o.judge_calls for o in outs])
            clusters = np.mean([len(o.clusters) for o in outs]) if spec.kind == "deepprune" else float("nan")
            print(f"{n:>5} {spec.name:<26} {rate:>10.1f} {calls:>20.1f} {n * clusters:>13.1f}")
        if n <= 64:  # the judge scores all N^2 pairs of a draw in one batch: at N = 512 that is 262k pairs/problem
            sims = {pid: {"judge": head_similarity(head, e)} for pid, e in emb.items()}
            rate, _ = time_method(methods[2], problems, engine, args.k, args.repeats, sims)
            print(f"{n:>5} {'deepprune (PairHead judge)':<26} {rate:>10.1f}")
        if n <= 64:
            small = max(2, args.problems // 4)
            problems, engine, _ = synthetic_corpus(small, n, 6, rng, logprobs=True)
            spec = MethodSpec("deepconf_online", "deepconf_online", {"warmup": max(2, n // 8), "eta": 10, "window": 256})
            rate, outs = time_method(spec, problems, engine, args.k, args.repeats)
            tokens = np.mean([o.tokens for o in outs])
            print(f"{n:>5} {'deepconf_online (streamed)':<26} {rate:>10.1f}   ({tokens:,.0f} tokens/problem, "
                  f"{tokens * rate:,.0f} tokens/s through on_token)")


if __name__ == "__main__":
    main()
