"""Throughput of the replay simulator on synthetic traces, for N = 8, 64 and 512.

    python benchmarks/bench_simulator.py [--problems 20] [--repeats 5]

Prints problem-simulations per second for DeepPrune's greedy clustering and vote, excluding judge compute
(scores looked up in a precomputed matrix) and including it (a real PairHead scores each requested pair on
demand from 384-d prefix embeddings), the judge calls per problem against N x clusters, and how the cost
grows with N. Medians over repeats, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from deepprune.judges.encoder import PairHead, pair_features
from deepprune.pruning import methods as m
from deepprune.pruning.methods import Problem


def synthetic_problem(n: int, n_answers: int, rng: np.random.Generator, dim: int = 384):
    """N traces with a few answers; embeddings cluster by answer; the judge matrix from a noisy truth."""
    classes = rng.choice(n_answers, size=n, p=np.r_[0.7, np.full(n_answers - 1, 0.3 / (n_answers - 1))])
    centers = rng.normal(size=(n_answers, dim))
    emb = centers[classes] + 1.5 * rng.normal(size=(n, dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    same = (classes[:, None] == classes[None, :]).astype(float)
    judge = np.clip(0.15 + 0.7 * same + 0.15 * rng.normal(size=(n, n)), 0.01, 0.99)
    problem = Problem("synthetic", classes, classes == 0, rng.integers(200, 4000, size=n), judge=(judge + judge.T) / 2)
    return problem, emb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    head = PairHead(384, 128, 0.0).eval()
    rng = np.random.default_rng(0)
    print(f"{'N':>5} {'sims/s excl judge':>18} {'sims/s incl judge':>18} {'judge calls/problem':>20} "
          f"{'N x clusters':>13} {'clusters':>9} {'cost vs N=8':>12}")
    base = None
    for n in (8, 64, 512):
        data = [synthetic_problem(n, 6, rng) for _ in range(args.problems)]
        orders = [list(rng.permutation(n)) for _ in data]
        excl, incl, calls, clusters = [], [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outs = [m.deepprune(p, o, k=500, tau=0.5, q=2) for (p, _), o in zip(data, orders)]
            excl.append(len(data) / (time.perf_counter() - start))
            start = time.perf_counter()
            for (p, emb), o in zip(data, orders):
                t_emb = torch.from_numpy(emb)

                @torch.inference_mode()
                def judge(i: int, members: list[int], t_emb=t_emb) -> np.ndarray:
                    feats = pair_features(t_emb[[i] * len(members)], t_emb[members])
                    return torch.sigmoid(head(feats)).numpy()

                clusters_, _ = m.greedy_cluster(o, judge, 0.5)
            incl.append(len(data) / (time.perf_counter() - start))
            calls = [o.judge_calls for o in outs]
            clusters = [o.clusters for o in outs]
        row = (statistics.median(excl), statistics.median(incl), float(np.mean(calls)), n * float(np.mean(clusters)),
               float(np.mean(clusters)))
        base = base or row
        print(f"{n:>5} {row[0]:>18.1f} {row[1]:>18.1f} {row[2]:>20.1f} {row[3]:>13.1f} {row[4]:>9.1f} "
              f"{base[0] / row[0]:>11.0f}x")
    print("cost grows about linearly in N x clusters: each arriving trace is compared once with each existing "
          "cluster (r = 1), so judge calls per problem never exceed N x clusters")


if __name__ == "__main__":
    main()
