"""Flow of the sample stage: a corpus through its backend into data/traces/<corpus>.jsonl."""

from __future__ import annotations

import contextlib
import sys

from prefect import flow

from deepprune import paths
from deepprune.sampling import SampleRequest
from deepprune.sampling.live import TRACE_SEED_RULE, managed_server
from deepprune.tokens import token_unit
from flows._stage import run_stage, stage_params, stage_run, write_output
from tasks.sample import sample_traces, save_traces


@flow(name="sample", flow_run_name="sample@{corpus}", log_prints=True)
def sample_flow(corpus: str, params_path: str = "params.yaml") -> dict[str, float]:
    """Sample (or replay) one corpus's traces and write them with their metrics."""
    params = stage_params(params_path)
    cfg = params.corpus(corpus)
    with stage_run("sample", corpus, {"seed": params.seed, "sample": params.sample.model_dump(),
                                      "corpus": cfg.model_dump()}) as run:
        request = SampleRequest(dataset=corpus, corpus=cfg, settings=params.sample, seed=params.seed,
                                shard_dir=paths.sample_cache(corpus))  # beside the stage's outputs (its cwd)
        live = cfg.importer == "live"
        server = managed_server(params.sample.server, paths.server_log()) \
            if live and params.sample.backend == "openai" else contextlib.nullcontext()
        with server:
            problems = sample_traces(request)
        n_traces = save_traces(paths.traces(corpus), problems)
        stats = request.stats
        meta = {"corpus": corpus, "importer": cfg.importer, "seed": params.seed,
                "engine": request.info.get("engine", {"engine": "replay", "source": cfg.path}),
                "generation": params.sample.generation.model_dump() if live else None,
                "n": params.sample.n if live else None,
                # lengths, k and prefixes of this corpus are all in this tokenizer's tokens
                "token_unit": paths.portable(token_unit(cfg.tokenizer, params.sample.backend, params.sample.model_path,
                                                  params.sample.server.tokenizer_path)),
                "trace_seed": f"{TRACE_SEED_RULE}; trace_id = 's<seed>'" if live else None}
        write_output(paths.traces_meta(corpus), meta)
        run.log_params({"engine": meta["engine"]})
        run.log_artifact(paths.traces_meta(corpus))
        checked = stats.get("source_answer_checked", 0)
        metrics = {
            "sample/problems": len(problems),
            "sample/traces": n_traces,
            "sample/skipped_records": int(stats.get("skipped", 0)),
            "sample/no_answer": int(stats.get("no_answer", 0)),
            "sample/total_tokens": sum(t.n_tokens for g in problems for t in g),
            "sample/extractor_agreement_with_source": (stats.get("source_answer_agrees", 0) / checked) if checked else None,
        }
        if live:
            seconds = stats.get("generation_seconds", 0.0)
            metrics.update({"sample/generated_tokens": int(stats.get("generated_tokens", 0)),
                            "sample/resumed_problems": int(stats.get("resumed_problems", 0)),
                            "sample/tokens_per_second": (stats["generated_tokens"] / seconds) if seconds else None,
                            "sample/accuracy": sum(bool(t.correct) for g in problems for t in g) / max(n_traces, 1)})
        write_output(paths.metrics("sample", corpus), metrics)
        run.log_metrics(metrics)
        print(f"sample[{corpus}]: {n_traces} traces of {len(problems)} problems -> {paths.traces(corpus)}")
        return metrics


def main() -> None:
    run_stage("sample", sample_flow, sys.argv[1])


if __name__ == "__main__":
    main()
