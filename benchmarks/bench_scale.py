"""A wide corpus through the stages that grow with it: 150 problems x 40 traces (6,000 traces, 117,000 pairs) run
label, embed, judge and prune as DVC runs them (`python -m flows.<stage> wide`), each timed, then every judge
variant's training and scoring throughput on that corpus's pairs.

    python -m benchmarks.bench_scale [--problems 150] [--traces 40] [--cap 60] [--tokens-k 128] [--uncapped]

The corpus is made of real traces: the shipped date questions (gpt-3.5-turbo, 10 traces each), each question's
traces repeated up to `--traces`, every copy opening with its own line ("Attempt 17.") so that no two traces share
a prefix and the embed stage encodes every one (it encodes each distinct text once). Answers, lengths and the
answer extractor are the real ones; the copies make it a benchmark of cost, not of judge quality. The corpus is added
by field mapping alone, as the README's "Bring your own traces" says, with its own token prefix (`tokens_k`,
`truncation`) and `judge.train.max_pairs_per_problem: --cap` (null with `--cap 0`): training is capped per problem,
every pair is still scored held-out and replayed by prune.

Prints each stage's wall time (its process, start-up included) and the total; then, per judge variant, the pairs
it trains on in one fold and its pairs/s trained (pairs x epochs / s) and scored, and with `--uncapped` the same fit
on every training pair of the fold, for the ratio. A judge that runs the encoder itself (kind cross_encoder, or
judge.train.finetune_encoder) trains on and scores the first 64 pairs only, with the stage's encoder: its rate, not
a fit of hours. Runs in a temporary workspace with its own Prefect server and
MLflow store; the project's outputs and stores are not touched.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepprune import paths  # noqa: E402
from deepprune.config import read_params  # noqa: E402
from deepprune.services import free_port, service  # noqa: E402

SOURCE = ROOT / "data/raw/traces/verifycot_date_gpt35_246x10.json"
STAGES = ("sample", "label", "embed", "judge", "prune")
ENCODER_SAMPLE = 64  # pairs a judge that runs the encoder itself trains on and scores here (a rate, not a full fit)


def wide_corpus(path: Path, problems: int, traces: int) -> int:
    """`problems` date questions x `traces` traces each, in the shipped file's own layout (generic importer, json):
    a question's real traces in turn, every copy opening with its own line. Returns the number of traces."""
    source = json.loads(SOURCE.read_text(encoding="utf-8"))
    if problems > len(source):
        raise SystemExit(f"--problems {problems}: the date corpus has {len(source)} questions")
    records = []
    for record in source[:problems]:
        outputs, answers = record["model_outputs"], record["pred_answers"]
        records.append({"example_idx": record["example_idx"], "final_answer": record["final_answer"],
                        "model_outputs": [f"Attempt {j + 1}.\n{outputs[j % len(outputs)]}" for j in range(traces)],
                        "pred_answers": [answers[j % len(answers)] for j in range(traces)]})
    path.write_text(json.dumps(records), encoding="utf-8")
    return problems * traces


def workspace(problems: int, traces: int, cap: int | None, tokens_k: int) -> Path:
    """A temporary project holding the params (the project's, and the `wide` corpus) and the corpus file."""
    ws = Path(tempfile.mkdtemp(prefix="deepprune-bench-scale-"))
    wide_corpus(ws / "wide.json", problems, traces)
    params = read_params(ROOT / "params.yaml")
    date = params["corpora"]["date"]
    params["corpora"]["wide"] = {
        "importer": "generic", "format": "json", "path": str(ws / "wide.json"), "model": date["model"],
        "tokenizer": date["tokenizer"], "answer": date["answer"], "fields": date["fields"],
        "tokens_k": [tokens_k], "truncation": {"strategy": "tokens", "k": tokens_k}}
    params["ablate"]["table_k"]["tokens"] = tokens_k  # the ablation's table reads a k every corpus has built
    params["judge"]["train"]["max_pairs_per_problem"] = cap
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return ws


def run_stages(ws: Path, env: dict[str, str]) -> dict[str, float]:
    """Each stage's process, in order, timed from outside."""
    seconds = {}
    for stage in STAGES:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"flows.{stage}", "wide"], cwd=ws, env=env, capture_output=True,
                              text=True, timeout=7200)
        seconds[stage] = time.perf_counter() - started
        if proc.returncode:
            raise SystemExit(f"{stage}@wide failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        print(f"{stage}@wide: {seconds[stage]:.1f} s", flush=True)
    return seconds


def judge_throughput(ws: Path, cap: int | None, uncapped: bool, repeats: int = 3) -> list[dict[str, object]]:
    """Every judge variant fitted on fold 0's training rows (capped as the stage caps them, and uncapped with
    `uncapped`) and scoring fold 0's pairs, from the embed stage's table: pairs/s trained and scored (capped fits:
    the median of `repeats`; a judge that runs the encoder itself: one fit on 64 pairs)."""
    import numpy as np

    from deepprune.config import load_params
    from deepprune.judges import judge_class
    from deepprune.judges.embeddings import load_table
    from deepprune.judges.encoder import EncoderJudge, SentenceEncoder
    from deepprune.judges.evaluate import pair_data
    from deepprune.pairs import prefix_texts, read_pairs, read_prefixes
    from deepprune.truncate import prefix_name

    params = load_params(ws / "params.yaml")
    cfg = params.judge
    truncation = params.truncation("wide")
    prefix = prefix_name(truncation.strategy, truncation.k)
    pairs = read_pairs(ws / paths.pairs("wide"))
    texts = prefix_texts(read_prefixes(ws / paths.prefixes("wide")), prefix, str(ws / paths.prefixes("wide")))
    data = pair_data(pairs, texts, load_table(ws / paths.embeddings("wide")).lookup(prefix))
    everything = np.flatnonzero(data.folds != 0)
    test = np.flatnonzero(data.folds == 0)
    runs = [("capped", data.training_rows(everything, cfg.train, params.seed))] if cap else []
    if uncapped or not cap:
        runs.append(("every pair", everything))
    # judges on precomputed embeddings train on a stand-in encoder; a judge that runs the encoder itself (the
    # cross-encoder, a fine-tuned encoder) gets the stage's encoder (judge.encoder_path) and a sample of the rows: on
    # every pair it trains for hours. A fine-tuned encoder is put back after each fit, as cross_validate does.
    stub = type("Encoder", (), {"dim": data.emb_a.shape[1], "path": "bench", "source": "bench"})()
    real: list[Any] = []
    rows = []
    for name, variant in sorted(cfg.variants.items()):
        cls = judge_class(variant.kind)
        retunes = cls is EncoderJudge and cfg.train.finetune_encoder  # its embeddings change with the fit
        runs_encoder = not getattr(cls, "reads_embeddings", True) or retunes
        if runs_encoder and not real:
            real.append(SentenceEncoder(cfg.encoder_path, cfg.max_length))
            frozen = copy.deepcopy(real[0].model.state_dict())
        todo = runs if cls.trainable else [("nothing (untrained)", everything[:0])]
        if runs_encoder:  # one fit, on the first rows of the first run
            todo = [(f"{label}, first {ENCODER_SAMPLE} pairs", train[:ENCODER_SAMPLE]) for label, train in todo[:1]]
        for label, train in todo:
            tested = test[:ENCODER_SAMPLE] if runs_encoder else test
            texts_a, texts_b = [data.texts_a[i] for i in tested], [data.texts_b[i] for i in tested]
            fit, score = [], []
            for _ in range(repeats if label == "capped" else 1):  # a fit on every pair takes minutes: once
                judge = cls(real[0] if runs_encoder else stub, cfg.train, variant.loss, variant.oversample,
                            params.seed, variant.features)
                started = time.perf_counter()
                judge.fit(data.emb_a[train], data.emb_b[train], data.labels[train],
                          [data.texts_a[i] for i in train], [data.texts_b[i] for i in train])
                fit.append(time.perf_counter() - started)
                started = time.perf_counter()
                if retunes:  # scored as the stage scores it: the held-out prefixes embedded by the tuned encoder
                    judge.score(real[0].embed(texts_a, cfg.batch_size), real[0].embed(texts_b, cfg.batch_size),
                                texts_a, texts_b)
                else:
                    judge.score(data.emb_a[tested], data.emb_b[tested], texts_a, texts_b)
                score.append(time.perf_counter() - started)
                if retunes:
                    real[0].model.load_state_dict(frozen)
            # passes over the training pairs: the head's epochs, or the encoder's for a judge that runs it
            epochs = (cfg.train.finetune_epochs if runs_encoder else cfg.train.epochs) if cls.trainable else 0
            rows.append({"judge": name, "training": label, "pairs": len(train),
                         "fit_s": statistics.median(fit) if cls.trainable else 0.0,
                         "trained_per_s": len(train) * epochs / statistics.median(fit) if cls.trainable else None,
                         "scored_per_s": len(tested) / statistics.median(score)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=150)
    parser.add_argument("--traces", type=int, default=40)
    parser.add_argument("--cap", type=int, default=60, help="judge.train.max_pairs_per_problem (0: null, uncapped)")
    parser.add_argument("--tokens-k", type=int, default=128, help="the corpus's token prefix and truncation")
    parser.add_argument("--uncapped", action="store_true", help="also time each judge on every training pair")
    args = parser.parse_args(argv)
    cap = args.cap or None
    ws = workspace(args.problems, args.traces, cap, args.tokens_k)
    env = {**os.environ, "PREFECT_HOME": str(ws / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
           "DEEPPRUNE_MLFLOW_ARTIFACTS": str(ws / "mlartifacts"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for key in ("DEEPPRUNE_PARENT_RUN_ID", "DEEPPRUNE_PIPELINE_FLOW_RUN", "DEEPPRUNE_WARM_SOCKET"):
        env.pop(key, None)
    port = free_port()
    env["PREFECT_API_URL"] = api = f"http://127.0.0.1:{port}/api"
    from flows.server import healthy

    server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    try:
        with service(server, lambda: healthy(api), 180, "the Prefect server", ws / "prefect.log", env):
            seconds = run_stages(ws, env)
        n_pairs = sum(1 for _ in open(ws / paths.pairs("wide"), encoding="utf-8"))
        prune = json.loads((ws / paths.metrics("prune", "wide")).read_text(encoding="utf-8"))
        throughput = judge_throughput(ws, cap, args.uncapped)
    finally:
        shutil.rmtree(ws, ignore_errors=True)

    n_traces = args.problems * args.traces
    print(f"\n{args.problems} problems x {args.traces} traces = {n_traces:,} traces, {n_pairs:,} pairs; prefix "
          f"tokens_{args.tokens_k}; judge.train.max_pairs_per_problem: {cap}; {os.cpu_count()} CPUs\n")
    print("| stage | wall s |\n|---|---:|")
    for stage, value in seconds.items():
        print(f"| {stage}@wide | {value:.1f} |")
    core = sum(seconds[s] for s in ("label", "embed", "judge", "prune"))
    print(f"| label + embed + judge + prune | {core:.1f} ({core / 60:.1f} min) |")
    headline = prune.get("prune/headline/oracle_savings_share")
    print(f"\nprune@wide: N = {prune.get('prune/n')}, {prune.get('prune/problems')} problems; DeepPrune's savings as a "
          f"share of the oracle's: {headline if headline is None else f'{headline:.2f}'}")
    print("\n| judge | trained on (fold 0) | pairs | fit s | pairs/s trained (x epochs) | pairs/s scored |")
    print("|---|---|---:|---:|---:|---:|")
    for row in throughput:
        trained = "-" if row["trained_per_s"] is None else f"{row['trained_per_s']:,.0f}"
        print(f"| {row['judge']} | {row['training']} | {row['pairs']:,} | {row['fit_s']:.1f} | {trained} | "
              f"{row['scored_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
