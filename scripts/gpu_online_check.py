"""GPU check of live generation and online pruning (issue 5): the transformers backend on CUDA with a randomly
initialised Qwen3-architecture model built from a config (about 0.5B parameters, no download), N traces on a few
prompts, and cons@N against DeepPrune online and DeepConf online side by side: tokens/s, token accounting, wall
time. The core package alone: no Prefect, MLflow, DVC or network.

    python scripts/gpu_online_check.py [--size 0.5b] [--n 64] [--prompts 3] [--max-tokens 256] [--k 64]
    python scripts/gpu_online_check.py --device cpu --size tiny --n 4 --prompts 1 --max-tokens 16 --k 4  # dry run

The weights are random, so answers and accuracy mean nothing; DeepPrune's judge is a small random Qwen3 causal-LM
judge (the real judge code path, scores without meaning). What the run shows is throughput and that each
method's tokens are counted by the engine and stop where the method says.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tau", type=float, default=0.5)
    args = parser.parse_args()

    import torch

    from deepprune.answers import AnswerSpec
    from deepprune.config import JudgeLMConfig, read_params
    from deepprune.judges.causal_lm import CausalLMJudge
    from deepprune.models import parameter_count, random_qwen3, train_tokenizer
    from deepprune.sampling.engines import GenerationSettings, TransformersEngine
    from deepprune.pruning.online import OnlineProblem, compare_methods, format_comparison, online_methods
    from deepprune.sampling.problems import build_messages, load_problems

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --size tiny for a dry run")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    items = load_problems("math500", ROOT / "data/raw/problems/math500.jsonl", limit=200)
    tokenizer = train_tokenizer((i.question for i in items), vocab_size=16384)
    model = random_qwen3(tokenizer, args.size, seed=0, dtype=dtype, device=args.device)
    engine = TransformersEngine(settings=GenerationSettings(0.8, 0.95, 5), batch_size=args.batch, model=model,
                                tokenizer=tokenizer, context_length=8192)
    judge_model = random_qwen3(tokenizer, "small", seed=1, dtype=dtype, device=args.device)
    raw = read_params(ROOT / "params.yaml")["judge_lm"]
    raw.update(device=args.device, max_length=4096)
    judge = CausalLMJudge(JudgeLMConfig.model_validate(raw), 0, judge_model, tokenizer)

    def similarity(seeds, prefixes):
        import numpy as np

        n = len(prefixes)
        scores = judge.score_texts([a for a in prefixes for _ in prefixes], [b for _ in prefixes for b in prefixes],
                                   batch_size=256)
        return np.asarray(scores).reshape(n, n)

    prompts = [OnlineProblem(i.problem_id, engine.render(build_messages(
        i, {"math": "{question}\nPut the final answer in \\boxed{}."})), i.gold) for i in items[: args.prompts]]
    print(f"generator: Qwen3 '{args.size}' {parameter_count(model) / 1e6:.0f}M params, {dtype}, {args.device}; "
          f"N={args.n}, {args.prompts} prompts, max {args.max_tokens} tokens, k={args.k}, batch {args.batch}", flush=True)
    start = time.perf_counter()
    # the paper's 16 warm-up traces and 2048-token window, scaled down when N or the budget is small (W must stay
    # below N, and a window longer than every trace never stops one)
    methods = online_methods([args.tau], r=1, q=2, max_clusters=None, vote="all_completed",
                             warmup=min(16, max(1, args.n // 4)), eta=90, window=min(2048, max(1, args.max_tokens // 8)))
    table = compare_methods(engine, prompts, args.n, args.max_tokens, args.k, similarity, methods,
                            AnswerSpec(extractor="boxed_math")).table
    print(format_comparison(table))
    summary = {"total_wall_s": round(time.perf_counter() - start, 1),
               "judge_pairs_scored": judge.scoring.pairs, "judge_pairs_per_s": round(judge.scoring.pairs_per_second, 1)}
    if args.device == "cuda":
        summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
