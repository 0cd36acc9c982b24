"""Judge throughput on this CPU: pairs per second for scoring and for training, per judge, with batch size and
prompt/prefix length, so a user can size a run.

    python benchmarks/bench_judges.py [--traces 48] [--repeats 3] [--skip-lm]

Prefixes are real: the first k tokens of the shipped MATH traces (k = 32 and 128). Every figure is a median over
repeats, measured side by side in one run.

- sbert_cosine / encoder (frozen MiniLM + trained head): scoring encodes each distinct prefix once and scores
  every pair from the cached embeddings (online, a trace's prefix meets many clusters); the line "no reuse"
  encodes both prefixes of every pair again, to show what the reuse buys.
- encoder training: the head on cached embeddings; and, for scale, fine-tuning MiniLM itself (finetune_encoder).
- encoder + shared_numbers: the same head that also reads what the two prefixes' numbers share.
- cross_encoder: MiniLM reading both prefixes as one input: one encoder pass per pair (nothing is reused between
  pairs), and training fine-tunes the whole encoder.
- causal_lm (SmolLM2-135M-Instruct, fp32): one forward per pair (the prompt joins both prefixes, so nothing is
  reused between pairs); training is LoRA (r = 8, q/k/v/o) and a full fine-tune.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import numpy as np
import torch

from deepprune.config import CorpusConfig, JudgeLMConfig, TrainConfig, read_params
from deepprune.data.importers import import_corpus
from deepprune.tokens import get_tokenizer
from deepprune.truncate import first_k_tokens


def real_prefixes(n: int, k: int) -> list[str]:
    """First k tokens of the first n shipped MATH traces."""
    raw = read_params("params.yaml")
    cfg = CorpusConfig.model_validate(raw["corpora"]["math"])
    tok = get_tokenizer(cfg.tokenizer)
    texts = [t.text for t in itertools.islice(import_corpus(cfg), n)]
    return [first_k_tokens(t, k, tok) for t in texts]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(judge: str, what: str, batch: int, length: str, rate: float, unit: str = "pairs/s") -> None:
    print(f"| {judge} | {what} | {batch} | {length} | {rate:,.1f} {unit} |", flush=True)


def bench_encoder(prefixes: dict[int, list[str]], repeats: int) -> None:
    from deepprune.judges.encoder import EncoderJudge, SentenceEncoder, cosine_scores

    encoder = SentenceEncoder(None, 256)
    for k, texts in prefixes.items():
        pairs = list(itertools.combinations(range(len(texts)), 2))
        ia, ib = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
        lengths = [len(encoder.tokenizer(t)["input_ids"]) for t in texts]
        length = f"{statistics.median(lengths):.0f} tok/prefix"
        fresh = iter(range(10**9))  # a new suffix per call: no text is ever cached between repeats

        def embed():
            n = next(fresh)
            return encoder.embed([f"{t} {n}" for t in texts], 32)

        emb = embed()
        judge = EncoderJudge(encoder, TrainConfig(epochs=1, hidden=128, batch_size=1024), "focal", True, 0)
        judge.fit(emb[ia], emb[ib], np.arange(len(pairs)) % 2)
        t_reuse = median_time(lambda: judge.score(*(lambda e: (e[ia], e[ib]))(embed())), repeats)
        row("encoder (head)", f"score, {len(texts)} prefixes -> {len(pairs)} pairs, prefixes encoded once", 32, length,
            len(pairs) / t_reuse)
        ta, tb = [texts[i] for i in ia], [texts[i] for i in ib]
        numbers = EncoderJudge(encoder, TrainConfig(epochs=1, hidden=128, batch_size=1024), "focal", True, 0,
                               ["shared_numbers"]).fit(emb[ia], emb[ib], np.arange(len(pairs)) % 2, ta, tb)
        t_numbers = median_time(lambda: numbers.score(*(lambda e: (e[ia], e[ib]))(embed()), ta, tb), repeats)
        row("encoder + shared_numbers", "score, same pairs, prefixes encoded once, numbers read per pair", 32, length,
            len(pairs) / t_numbers)
        t_cos = median_time(lambda: cosine_scores(*(lambda e: (e[ia], e[ib]))(embed())), repeats)
        row("sbert_cosine", "score, same pairs, prefixes encoded once", 32, length, len(pairs) / t_cos)
        sub = pairs[:32]

        def no_reuse():
            for a, b in sub:
                n = next(fresh)
                e = encoder.embed([f"{texts[a]} {n}", f"{texts[b]} {n}"], 2)
                judge.score(e[:1], e[1:])

        t_noreuse = median_time(no_reuse, 1)
        row("encoder (head)", "score, no reuse: both prefixes re-encoded per pair", 2, length, len(sub) / t_noreuse)
        labels = np.arange(len(pairs)) % 2
        cfg = TrainConfig(epochs=10, hidden=128, batch_size=1024)
        t_train = median_time(lambda: EncoderJudge(encoder, cfg, "focal", True, 0).fit(emb[ia], emb[ib], labels), repeats)
        row("encoder (head)", "train on cached embeddings (focal + oversampling)", 1024, length,
            10 * len(pairs) / t_train)
        t_train_numbers = median_time(lambda: EncoderJudge(encoder, cfg, "focal", True, 0, ["shared_numbers"]).fit(
            emb[ia], emb[ib], labels, ta, tb), repeats)
        row("encoder + shared_numbers", "train on cached embeddings and the prefixes' numbers", 1024, length,
            10 * len(pairs) / t_train_numbers)
        ft = TrainConfig(epochs=1, hidden=128, batch_size=16, finetune_encoder=True, finetune_epochs=1)
        sub_idx = np.arange(32)
        state = {k2: v.clone() for k2, v in encoder.model.state_dict().items()}
        t_ft = median_time(lambda: EncoderJudge(encoder, ft, "focal", False, 0).fit(
            emb[ia[sub_idx]], emb[ib[sub_idx]], labels[sub_idx], [texts[i] for i in ia[sub_idx]],
            [texts[i] for i in ib[sub_idx]]), 1)
        encoder.model.load_state_dict(state)
        row("encoder (MiniLM fine-tuned)", "train, encoder and head", 16, length, len(sub_idx) / t_ft)
        from deepprune.judges.cross_encoder import CrossEncoderJudge

        cross_cfg = TrainConfig(batch_size=16, finetune_epochs=1)
        sub_a, sub_b = [texts[i] for i in ia[sub_idx]], [texts[i] for i in ib[sub_idx]]
        cross = CrossEncoderJudge(encoder, cross_cfg, "focal", False, 0)
        t_cross_fit = median_time(lambda: cross.fit(None, None, labels[sub_idx], sub_a, sub_b), 1)
        row("cross_encoder (MiniLM, pair read together)", "train, encoder and head", 16, length,
            len(sub_idx) / t_cross_fit)
        t_cross = median_time(lambda: cross.score(None, None, [f"{t} {next(fresh)}" for t in sub_a], sub_b), repeats)
        row("cross_encoder (MiniLM, pair read together)", "score, one encoder pass per pair", 32, length,
            len(sub_idx) / t_cross)


def bench_causal_lm(prefixes: dict[int, list[str]], repeats: int) -> None:
    from deepprune.judges.causal_lm import CausalLMJudge, load_causal_lm

    raw = read_params("params.yaml")["judge_lm"]
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(None, "float32", "cpu")
    print(f"(SmolLM2-135M-Instruct loaded in {time.perf_counter() - start:.1f} s)", flush=True)
    for k, texts in prefixes.items():
        a, b = texts[: len(texts) // 2], texts[len(texts) // 2:]
        a, b = a[:16], b[:16]
        for lora in (True, False):
            raw["train"].update(steps=2, batch_size=4, grad_accum=1, checkpoint_every=0)
            raw["train"]["lora"]["enabled"] = lora
            raw["max_length"] = 1024
            cfg = JudgeLMConfig.model_validate(raw)
            judge = CausalLMJudge(cfg, 0, model if not lora else copy.deepcopy(model), tokenizer)
            if lora:
                judge.score_texts(a[:2], b[:2])  # warm-up
                times = [median_time(lambda: judge.score_texts(a, b, batch_size=8), 1) for _ in range(repeats)]
                tokens = judge.scoring.tokens / judge.scoring.pairs
                row("causal_lm (SmolLM2-135M)", "score", 8, f"{tokens:.0f} tok/prompt", len(a) / statistics.median(times))
            n = min(8, len(a))
            judge.fit_texts(a[:n], b[:n], np.arange(n) % 2)
            per_pair = judge.training.seconds / judge.training.pairs
            row("causal_lm (SmolLM2-135M)", f"train, {'LoRA r=8' if lora else 'full fine-tune'}", 4,
                f"{judge.training.tokens / judge.training.pairs:.0f} tok/prompt", 1 / per_pair)
            del judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=48, help="prefixes per length (all their pairs are scored)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-lm", action="store_true", help="leave out the causal-LM judge (the slow part)")
    args = parser.parse_args()
    torch.manual_seed(0)
    prefixes = {k: real_prefixes(args.traces, k) for k in (32, 128)}
    print(f"torch threads: {torch.get_num_threads()}\n")
    print("| judge | what | batch | length | throughput |\n|---|---|---|---|---|")
    bench_encoder(prefixes, args.repeats)
    if not args.skip_lm:
        bench_causal_lm(prefixes, args.repeats)


if __name__ == "__main__":
    main()
