"""Live sampling on this CPU with the transformers backend: what one decoding step costs at each batch size, and
the sample stage's way of calling the engine (one problem's N traces per call, or whole problems grouped to fill
`sample.batch_size`), side by side in one run on the same problems and trace seeds.

    python benchmarks/bench_generation.py [--problems 5] [--n 4] [--max-tokens 64] [--repeats 3]

The generator is the packaged SmolLM2-135M-Instruct (or --model PATH). Prints the median seconds per decoding step
for batches of 1, 4, 8 and problems x n traces, then the wall time and tokens/s of generating every problem's
traces per problem and grouped, and their ratio. The two ways give the same traces (each keeps its own seed); the
point is the time: on CPU a step reads every weight once, whatever the batch.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (params.yaml `threads`)")
    args = parser.parse_args()

    import torch

    from deepprune.compute import fix_threads
    from deepprune.config import load_params
    from deepprune.sampling.engines import GenerationSettings, GenJob, TransformersEngine
    from deepprune.sampling.live import trace_seed
    from deepprune.sampling.problems import DATASETS, build_messages, load_problems

    fix_threads(args.threads)
    settings = GenerationSettings()
    engine = TransformersEngine(args.model, settings, batch_size=args.problems * args.n)
    items = load_problems(args.dataset, DATASETS[args.dataset][0], args.problems)
    prompts = load_params("params.yaml").sample.prompts  # the sample stage's own prompts
    jobs = [[GenJob(engine.render(build_messages(item, prompts, None)), args.max_tokens,
                    trace_seed(0, item.problem_id, j)) for j in range(args.n)] for item in items]

    print(f"torch threads {torch.get_num_threads()}; model {engine.model_name}")
    print("| batch | seconds per decoding step (median) |\n|---:|---:|")
    for batch in sorted({1, 4, 8, args.problems * args.n}):
        ids = torch.randint(0, 1000, (batch, 100))
        times = []
        with torch.inference_mode():
            out = engine.model(input_ids=ids, use_cache=True)
            cache_arg = "cache" if hasattr(out, "cache") else "past_key_values"
            past, current = getattr(out, cache_arg), ids[:, -1:]
            for _ in range(max(args.repeats, 1) * 5):
                start = time.perf_counter()
                out = engine.model(input_ids=current, use_cache=True, logits_to_keep=1, **{cache_arg: past})
                past = getattr(out, cache_arg)
                times.append(time.perf_counter() - start)
        print(f"| {batch} | {statistics.median(times):.4f} |")

    rows = {"per problem": [], "grouped": []}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for way in rows:
            start = time.perf_counter()
            if way == "per problem":
                results = [r for problem in jobs for r in engine.generate(problem)]
            else:
                results = engine.generate([job for problem in jobs for job in problem])
            seconds = time.perf_counter() - start
            rows[way].append((seconds, sum(r.n_tokens for r in results)))
            texts[way] = [r.text for r in results]
    print(f"\n{args.problems} problems x {args.n} traces, at most {args.max_tokens} tokens, "
          f"median of {args.repeats} runs side by side\n")
    print("| engine calls | wall s | tokens | tokens/s |\n|---|---:|---:|---:|")
    medians = {}
    for way, runs in rows.items():
        seconds = statistics.median(s for s, _ in runs)
        tokens = runs[-1][1]
        medians[way] = seconds
        print(f"| {way} | {seconds:.1f} | {tokens} | {tokens / seconds:.1f} |")
    print(f"\ngrouped / per problem wall time: {medians['grouped'] / medians['per problem']:.2f}; "
          f"same traces: {texts['grouped'] == texts['per problem']}")


if __name__ == "__main__":
    main()
