"""Flow of the embed stage: every prefix of every trace encoded once, shared by judge, sweep and ablate."""

from __future__ import annotations

import sys
import time

from prefect import flow

from deepprune import paths
from flows._stage import run_stage, stage_params, stage_run, write_output
from tasks.judge import encode_prefixes, load_encoder, load_labels, save_embeddings


@flow(name="embed", flow_run_name="embed@{corpus}", log_prints=True)
def embed_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float]:
    """Encode every prefix the label stage built (all strategies and k) with the sentence encoder."""
    params = stage_params(params_path)
    cfg = params.judge
    with stage_run("embed", corpus, {"encoder_path": cfg.encoder_path, "max_length": cfg.max_length,
                                     "batch_size": cfg.batch_size}) as run:
        _, prefixes = load_labels(corpus)
        encoder = load_encoder(cfg.encoder_path, cfg.max_length)
        start = time.perf_counter()
        table = encode_prefixes(prefixes, encoder, cfg.batch_size)
        seconds = time.perf_counter() - start
        save_embeddings(paths.embeddings(corpus), table)
        distinct = len({text for row in prefixes.values() for text in row.values()})
        metrics = {"embed/traces": len(table.keys), "embed/prefix_sets": len(table.matrices),
                   "embed/distinct_texts": distinct, "embed/seconds": round(seconds, 1),
                   "embed/texts_per_second": round(distinct / seconds, 2) if seconds else 0.0}
        write_output(paths.metrics("embed", corpus), metrics)
        run.log_metrics(metrics)
        print(f"embed[{corpus}]: {distinct} distinct prefixes of {len(table.keys)} traces in {seconds:.0f} s")
        return metrics


def main() -> None:
    run_stage("embed", embed_flow, sys.argv[1])


if __name__ == "__main__":
    main()
