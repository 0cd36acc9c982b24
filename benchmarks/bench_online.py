"""Live generation on this CPU with the transformers backend: cons@N against DeepPrune online and DeepConf online
on the same problems and trace seeds, side by side in one run.

    python benchmarks/bench_online.py [--problems 3] [--n 8] [--max-tokens 192] [--k 32] [--dataset gsm8k]

The generator is the packaged SmolLM2-135M-Instruct (or --model PATH). DeepPrune's judge is the trained encoder
judge the pipeline saved (data/judge/<--judge-corpus>/models/<prune.judge>.safetensors) when it exists, else the
SBERT cosine with --tau 0.9. Prints tokens (the engine's count), token reduction against cons@N, accuracy, wall
time, tokens/s, judge seconds, and how many traces finished, were pruned, were stopped by confidence or hit the
length limit.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--k", type=int, default=32, help="prefix tokens before the judge looks")
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--model", default=None)
    parser.add_argument("--judge-corpus", default="math")
    parser.add_argument("--tau", type=float, nargs="+", default=None, help="one DeepPrune run per value")
    parser.add_argument("--q", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--eta", type=float, default=90)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    from deepprune import paths
    from deepprune.answers import AnswerSpec
    from deepprune.config import load_params
    from deepprune.judges.encoder import CosineJudge, SentenceEncoder, load_encoder_judge
    from deepprune.sampling.engines import GenerationSettings, TransformersEngine
    from deepprune.pruning.online import (OnlineProblem, compare_methods, format_comparison, judge_similarity,
                                          online_methods)
    from deepprune.sampling.problems import DATASETS, build_messages, load_problems

    params = load_params()
    start = time.perf_counter()
    engine = TransformersEngine(args.model, GenerationSettings(0.7, 0.95, 5), batch_size=args.batch)
    print(f"generator {engine.identity['model']} loaded in {time.perf_counter() - start:.1f} s; "
          f"torch threads {torch.get_num_threads()}")
    encoder = SentenceEncoder(params.judge.encoder_path, params.judge.max_length)
    saved = paths.judge_model(args.judge_corpus, params.prune.judge)
    if os.path.exists(saved):
        judge, taus, what = load_encoder_judge(saved, encoder), args.tau or [params.prune.tau], f"{params.prune.judge} ({saved})"
    else:
        judge, taus, what = CosineJudge(encoder, params.judge.train, "ce", False, 0), args.tau or [0.9], "sbert_cosine"
    print(f"judge: {what}, tau {taus}")
    items = load_problems(args.dataset, limit=args.problems)

    # answers are read as a live corpus on this dataset reads them (GSM8K: the last number), else by problem kind
    live = [c for c in params.corpora.values() if c.importer == "live" and c.dataset == args.dataset]
    spec = live[0].answer.spec() if live else AnswerSpec(
        extractor="letter" if DATASETS[args.dataset][1] == "letter" else "boxed_math")
    problems = [OnlineProblem(i.problem_id, engine.render(build_messages(i, params.sample.prompts, params.sample.system)),
                              i.gold) for i in items]
    methods = online_methods(taus, params.online.r, args.q, params.online.max_clusters, params.online.vote,
                             args.warmup, args.eta, args.window, params.online.deepconf.consensus)
    table = compare_methods(engine, problems, args.n, args.max_tokens, args.k, judge_similarity(judge, encoder),
                            methods, spec, seed=params.seed).table
    print(f"\n{args.problems} {args.dataset} problems x N={args.n}, max {args.max_tokens} tokens, k={args.k}, "
          f"batch {args.batch}\n")
    print(format_comparison(table))


if __name__ == "__main__":
    main()
