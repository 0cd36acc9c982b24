"""GPU check of the causal-LM judge (issue 4): fine-tune a randomly initialised Qwen3 judge for a few steps in
bf16 and score pairs, printing throughput. Needs only the core package (torch, transformers, tokenizers, numpy,
pydantic, PyYAML): no Prefect, MLflow or DVC, no network, no downloaded weights.

    python scripts/gpu_judge_check.py [--size small|0.5b] [--steps 8] [--pairs 256] [--batch 16] [--k 128]
    python scripts/gpu_judge_check.py --device cpu --size tiny --pairs 16 --steps 2   # a dry run anywhere

Prefixes are the first k tokens of the shipped MATH traces (tokenised by a BPE trained on them here); labels are
the traces' real same-answer labels. The model's weights are random: the AUROC printed is not a result, only a
check that the whole path runs; the throughput is the point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="Qwen3 shape: tiny, small (~60M), 0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=256, help="pairs scored (and the training pool)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--k", type=int, default=128, help="prefix tokens per trace")
    parser.add_argument("--lora", action="store_true", help="LoRA instead of the paper's full fine-tune")
    args = parser.parse_args()

    import numpy as np
    import torch

    from deepprune.config import JudgeLMConfig, read_params
    from deepprune.judges.causal_lm import CausalLMJudge
    from deepprune.metrics import auroc
    from deepprune.models import parameter_count, random_qwen3, train_tokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --size tiny for a dry run")
    rows = [json.loads(line) for line in open(ROOT / "data/raw/traces/qwen25math_math_cot_100x8.jsonl", encoding="utf-8")]
    start = time.perf_counter()
    tokenizer = train_tokenizer((r["code"][0] for r in rows), vocab_size=16384)
    print(f"tokenizer: {len(tokenizer)} tokens, trained in {time.perf_counter() - start:.1f} s")
    prefix = lambda text: tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[: args.k])
    pairs = []
    for r in rows:
        codes, preds = r["code"], r["pred"]
        for i, j in itertools.combinations(range(len(codes)), 2):
            pairs.append((prefix(codes[i]), prefix(codes[j]), int(preds[i] == preds[j])))
    rng = np.random.default_rng(0)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))[: args.pairs]]
    a, b, y = [p[0] for p in pairs], [p[1] for p in pairs], np.array([p[2] for p in pairs])

    raw = read_params(ROOT / "params.yaml")["judge_lm"]
    raw.update(device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32", max_length=4 * args.k + 256)
    raw["train"].update(steps=args.steps, batch_size=args.batch, grad_accum=args.grad_accum, checkpoint_every=0, lr=1e-5)
    raw["train"]["lora"]["enabled"] = args.lora
    raw["eval"]["batch_size"] = 2 * args.batch
    cfg = JudgeLMConfig.model_validate(raw)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = random_qwen3(tokenizer, args.size, seed=0, dtype=dtype, device=args.device)
    print(f"model: Qwen3 '{args.size}', {parameter_count(model) / 1e6:.1f}M parameters, {dtype}, {args.device}")
    judge = CausalLMJudge(cfg, 0, model, tokenizer)
    judge.score_texts(a[:4], b[:4])  # warm-up (kernels, allocator)
    judge.scoring = type(judge.scoring)()
    before = judge.score_texts(a, b)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    judge.fit_texts(a, b, y)
    sync()
    after = judge.score_texts(a, b)
    report = {
        "size": args.size, "params_m": round(parameter_count(model) / 1e6, 1), "device": args.device,
        "dtype": str(dtype), "lora": args.lora, "k": args.k,
        "prompt_tokens_per_pair": round(judge.scoring.tokens / judge.scoring.pairs, 1),
        "score_pairs_per_s": round(judge.scoring.pairs_per_second, 1),
        "score_tokens_per_s": round(judge.scoring.tokens / judge.scoring.seconds, 0),
        "train_pairs_per_s": round(judge.training.pairs_per_second, 1),
        "train_tokens_per_s": round(judge.training.tokens / judge.training.seconds, 0),
        "train_steps": args.steps, "pairs_per_step": args.batch * args.grad_accum,
        "train_loss_first_last": [round(judge.train_log[0], 4), round(judge.train_log[-1], 4)],
        "auroc_before_after (random weights: a path check, not a result)": [round(auroc(y, before), 3),
                                                                            round(auroc(y, after), 3)],
    }
    if args.device == "cuda":
        report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
