"""A typed, strict view of params.yaml: unknown keys and wrong types are errors that name the key.

params.yaml is the only source of defaults: a field here either has no default (params.yaml must give it) or a
default equal to the shipped params.yaml value (tests/unit/test_config.py walks the schema and checks)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepprune.answers import AnswerSpec
from deepprune.compute import check_device
from deepprune.metric_names import check_rate_name

# Who votes after DeepPrune's clustering (deepprune.pruning.controller, DESIGN.md section 4, docs/DECISIONS.md)
VoteRule = Literal["all_completed", "largest_cluster", "cluster_size"]
VOTE_HELP = ("all_completed: every trace that ran to the end votes; largest_cluster: only the largest cluster's "
             "completed members; cluster_size: every completed trace, with its cluster's size shared among the "
             "cluster's completed members (a pruned trace votes through them)")


class _Strict(BaseModel):
    # strict: YAML's `true` is not a count or a rate, and "3" is not a number (no silent coercion)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Probability = Annotated[float, Field(ge=0, le=1)]
Cosine = Annotated[float, Field(ge=-1, le=1)]
Device = Annotated[str, AfterValidator(check_device)]
PositiveInt = Annotated[int, Field(ge=1)]


class AnswerConfig(_Strict):
    """How a corpus's answers are extracted and compared (deepprune.answers)."""

    extractor: Literal["boxed_math", "letter", "regex"] = "boxed_math"
    pattern: str | None = Field(None, description="regex extractor: the last match's group 1 is the answer")
    normalizer: Literal["strip", "lower", "number", "date_mdy"] = "strip"
    gold_pattern: str | None = Field(None, description="the gold field's answer is this regex's last match, group 1 "
                                                      "(e.g. '####\\s*(.+)$'), then normalized like the answers; "
                                                      "null: the whole field")

    @model_validator(mode="after")
    def _regex_needs_pattern(self) -> "AnswerConfig":
        if self.extractor == "regex" and not self.pattern:
            raise ValueError("extractor 'regex' needs a pattern")
        for key in ("pattern", "gold_pattern"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                groups = re.compile(value).groups
            except re.error as exc:
                raise ValueError(f"{key} {value!r} is not a valid regex: {exc}") from None
            if groups < 1:
                raise ValueError(f"{key} {value!r} has no group: the answer is the last match's group 1")
        return self

    def spec(self) -> AnswerSpec:
        """The plain spec the core functions take."""
        return AnswerSpec(extractor=self.extractor, pattern=self.pattern, normalizer=self.normalizer,
                          gold_pattern=self.gold_pattern)


class FieldMap(_Strict):
    """Where the generic importer finds each trace field in a source record (dotted paths allowed)."""

    problem_id: str
    text: str | None = Field(None, description="one trace per record: the field holding its text")
    texts: str | None = Field(None, description="several traces per record: the field holding the list of texts")
    trace_id: str | None = Field(None, description="one trace per record: its id (default: running number)")
    gold: str | None = None
    source_answer: str | None = Field(None, description="with `text`: the answer the source recorded")
    source_answers: str | None = Field(None, description="with `texts`: the list of answers the source recorded")
    n_tokens: str | None = Field(None, description="token count recorded by the engine (else counted)")
    finish_reason: str | None = None
    logprobs: str | None = None
    model: str | None = Field(None, description="per-record model name (else the corpus's `model`)")

    @model_validator(mode="after")
    def _one_text_field(self) -> "FieldMap":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` (one trace per record) or `texts` (a list per record)")
        return self


class TruncationConfig(_Strict):
    strategy: Literal["tokens", "reasoning_words"]
    k: int = Field(ge=1)


class CorpusConfig(_Strict):
    """One trace corpus: a recorded file (replayed), or a problem set sampled live by `sample.backend`."""

    importer: Literal["qwen25_math_eval", "generic", "live"]
    path: str | None = Field(None, description="the recorded file; for live corpora the problem file (default: "
                                               "the shipped one of `dataset`)")
    dataset: Literal["aime24", "aime25", "math500", "gsm8k", "gpqa"] | None = Field(
        None, description="live corpora: the problem set")
    limit: int | None = Field(None, ge=1, description="the first N problems of this corpus (overrides sample.limit)")
    model: str
    format: Literal["json", "jsonl", "parquet"] = Field("jsonl", description="the recorded file's format; parquet "
                                                                           "is read through Hugging Face `datasets`")
    tokenizer: str = Field("qwen", description="the corpus's token unit (k, prefixes, lengths): 'qwen' (packaged Qwen "
                                               "tokenizer) or a local HF tokenizer dir; live corpora: 'engine' (the "
                                               "generating engine's own tokenizer)")
    answer: AnswerConfig = AnswerConfig()
    fields: FieldMap | None = None
    # A corpus whose traces are much shorter or longer than the others' cuts its own prefixes (optional keys)
    tokens_k: list[PositiveInt] | None = Field(None, description="this corpus's first-k-tokens prefixes (null: "
                                                                 "label.tokens_k)")
    truncation: TruncationConfig | None = Field(None, description="the prefix this corpus's embedding judges see and "
                                                                  "its prune stage pays for (null: judge.truncation)")

    @model_validator(mode="before")
    @classmethod
    def _live_counts_in_engine_tokens(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("importer") == "live" and "tokenizer" not in data:
            return {**data, "tokenizer": "engine"}
        return data

    @model_validator(mode="after")
    def _generic_needs_fields(self) -> "CorpusConfig":
        if self.importer == "generic" and self.fields is None:
            raise ValueError("importer 'generic' needs a `fields` mapping")
        if self.importer == "live" and self.dataset is None:
            raise ValueError("importer 'live' needs a `dataset` (aime24, aime25, math500, gsm8k or gpqa)")
        if self.importer != "live" and self.path is None:
            raise ValueError(f"importer {self.importer!r} needs a `path`")
        if (self.importer == "live") != (self.tokenizer == "engine"):
            raise ValueError("tokenizer: a live corpus counts, cuts and prunes in its engine's tokens (tokenizer: "
                             "engine); a recorded corpus names its own tokenizer ('qwen' or a local directory)")
        return self


class GenerationConfig(_Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(128, ge=1, description="generated tokens per trace at most")
    top_logprobs: int = Field(5, ge=0, description="top-k log-probabilities kept per token (DeepConf needs > 0)")


class ServerConfig(_Strict):
    """An OpenAI-compatible server (vLLM, SGLang, llama.cpp, or `python -m deepprune.sampling.server`)."""

    url: str = "http://127.0.0.1:8000/v1"
    model: str = Field("default", description="the model name the server expects in requests")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never in params)")
    tokenizer_path: str | None = Field(None, description="local tokenizer dir: prompts go through its chat template")
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(300, gt=0)
    retries: int = Field(2, ge=0, description="retries of a transient server error (then the Prefect task retries)")
    start_command: list[str] | None = Field(None, description="started before sampling and stopped after, e.g. "
                                                              "[vllm, serve, Qwen/Qwen3-4B, --port, '8000']")
    startup_timeout_s: float = Field(600, gt=0)


class SampleConfig(_Strict):
    backend: Literal["replay", "transformers", "openai"] = Field(
        "transformers", description="engine for live corpora (recorded corpora are always replayed)")
    limit: int | None = Field(None, ge=1, description="keep the first N problems of each corpus (null: all)")
    skip_invalid: bool = Field(False, description="skip (and count) records that fail validation instead of failing")
    n: int = Field(4, ge=1, description="live corpora: traces per problem")
    model_path: str | None = Field(None, description="transformers backend: local model dir or .gguf (null: the "
                                                     "packaged SmolLM2-135M-Instruct)")
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(32, ge=1,
                            description="transformers backend: traces decoded together (problems grouped to fill it)")
    generation: GenerationConfig = GenerationConfig()
    system: str | None = Field(None, description="system message of every prompt")
    prompts: dict[str, str] = Field(default_factory=lambda: {
        "math": "{question}\nPlease reason step by step, and put your final answer within \\boxed{}.",
        "choice": "{question}\nPlease reason step by step, and end with 'Answer: X' where X is the letter of your "
                  "choice."},
        description="prompt template per problem kind ({question} is filled in)")
    server: ServerConfig = ServerConfig()

    @field_validator("prompts")
    @classmethod
    def _prompts_take_the_question(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, template in value.items():
            if "{question}" not in template:
                raise ValueError(f"prompts.{kind} must contain {{question}} (the problem is filled in there)")
        return value


class LabelConfig(_Strict):
    tokens_k: list[PositiveInt] = Field(min_length=1, description="first-k-tokens prefixes to build (absolute counts)")
    reasoning_words_k: list[PositiveInt] = Field(min_length=1, description="first-k-reasoning-words prefixes to build")
    reasoning_words: list[str] = Field(min_length=1, description="cue words (whole words, case-insensitive) that "
                                                                 "start a reasoning-word segment (DESIGN.md section 1)")
    folds: int = Field(5, ge=2, description="grouped K-fold over problems")


class FocalConfig(_Strict):
    alpha: float = Field(0.25, gt=0, lt=1, description="alpha_t weight of the positive (same-answer) class")
    gamma: float = Field(2.0, ge=0, description="focusing exponent in FL = -alpha_t (1-p_t)^gamma log p_t")


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    batch_size: int = Field(1024, ge=1)
    oversample_ratio: float = Field(0.5, gt=0, description="minority:majority ratio after oversampling")
    focal: FocalConfig = FocalConfig()
    finetune_encoder: bool = Field(False, description="also train the encoder's weights (slow on CPU)")
    finetune_lr: float = Field(2e-5, gt=0)
    finetune_epochs: int = Field(1, ge=1)
    max_pairs_per_problem: int | None = Field(
        None, ge=1, description="train on at most this many pairs per problem, drawn at random (seed) in each "
                                "training fold (null: every pair); every pair is still scored held-out")


class VariantConfig(_Strict):
    kind: Literal["sbert_cosine", "encoder", "cross_encoder"] = Field(
        description="sbert_cosine and encoder: judges on prefix embeddings; cross_encoder: the encoder fine-tuned "
                    "on the two prefixes read together (slow on CPU); the causal-LM judge has its own section, "
                    "`judge_lm`")
    loss: Literal["ce", "focal"] = "ce"
    oversample: bool = False
    features: list[str] = Field(
        default_factory=list, description="pair features read from the prefix texts, beside the embeddings "
                                          "(deepprune/judges/text_features.py); encoder judges only")

    @model_validator(mode="after")
    def _features_need_training(self) -> "VariantConfig":
        if self.features and self.kind != "encoder":
            raise ValueError(f"features {self.features} need a trained judge (kind encoder), not {self.kind!r}")
        from deepprune.judges.text_features import TEXT_FEATURES

        unknown = [f for f in self.features if f not in TEXT_FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; known: {sorted(TEXT_FEATURES)}")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features {self.features} name one feature twice")
        return self


class JudgeConfig(_Strict):
    truncation: TruncationConfig
    encoder_path: str | None = Field(None, description="sentence encoder dir (null: packaged all-MiniLM-L6-v2)")
    max_length: int = Field(256, ge=8)
    batch_size: int = Field(32, ge=1)
    variants: dict[str, VariantConfig]
    primary: str = Field(description="the trained variant compared with the baseline")
    baseline: str = "sbert_cosine"
    train: TrainConfig = TrainConfig()
    fnr: float = Field(0.2, gt=0, lt=1, description="TNR is reported at this FNR")
    threshold: float = Field(0.5, ge=0, le=1, description="decision threshold for TNR/TPR")
    calibration: Literal["platt", "none"] = Field(
        "platt", description="trained judges' scores mapped to P(same answer) on the training folds only "
                             "(deepprune/judges/calibration.py); none: the raw head output")

    @model_validator(mode="after")
    def _named_variants_exist(self) -> "JudgeConfig":
        for role in ("primary", "baseline"):
            if getattr(self, role) not in self.variants:
                raise ValueError(f"{role} {getattr(self, role)!r} is not one of the variants {sorted(self.variants)}")
        return self


class PromptConfig(_Strict):
    """The causal-LM judge's prompt. Bump `version` whenever the wording changes: scores and models are only
    comparable under one version, and the version is logged with every run."""

    version: str
    system: str | None = Field(description="system message (chat-template models; null: none)")
    user: str = Field(description="user message; {trace_a} and {trace_b} are replaced by the two prefixes")
    yes: str = Field(description="the label token for 'same final answer' (must be one token)")
    no: str = Field(description="the label token for 'different final answers' (must be one token)")

    @model_validator(mode="after")
    def _placeholders(self) -> "PromptConfig":
        for slot in ("{trace_a}", "{trace_b}"):
            if slot not in self.user:
                raise ValueError(f"prompt.user must contain {slot}")
        return self


class LoraConfig(_Strict):
    enabled: bool = Field(True, description="false: full fine-tune (every weight)")
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class LMTrainConfig(_Strict):
    loss: Literal["focal", "ce"] = "focal"
    focal: FocalConfig = FocalConfig()
    oversample: bool = True
    oversample_ratio: float = Field(1.0, gt=0)
    steps: int = Field(ge=0, description="optimizer steps (0: no training, the zero-shot judge)")
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(2, ge=0, description="save a resumable checkpoint every N steps (0: never)")
    lora: LoraConfig = LoraConfig()


class LMEvalConfig(_Strict):
    folds: int = Field(2, ge=1, description="how many of the label stage's folds are held out in turn")
    pairs_per_class: int = Field(6, ge=1, description="held-out pairs per class (same / different) per fold")
    batch_size: int = Field(8, ge=1)


class JudgeLMConfig(_Strict):
    """The paper's judge: a causal LM asked whether two prefixes will reach the same answer; score = P(yes)."""

    corpora: list[str] = Field(description="corpora the judge_lm stage runs on")
    model_path: str | None = Field(None, description="local HF model directory or .gguf file (null: the "
                                                     "packaged SmolLM2-135M-Instruct)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU, float32 on CPU")
    device: Device = Field("auto", description="auto: cuda when available, else cpu")
    max_length: int = Field(512, ge=16, description="prompt tokens at most (longer prompts are an error)")
    truncation: TruncationConfig
    prompt: PromptConfig
    train: LMTrainConfig
    eval: LMEvalConfig = LMEvalConfig()
    compare: list[str] = Field(description="judge-stage variants scored on the same pairs")


class SweepConfig(_Strict):
    """A grid over the training recipe of a judge that trains; every point is a Prefect flow run and an MLflow
    child run, and the best point is registered as a model version."""

    judge: Literal["encoder", "causal_lm"] = "encoder"
    grid: dict[str, list[Any]] = Field(description="train keys (loss, focal.alpha, focal.gamma, oversample, "
                                                   "oversample_ratio, ...) to the values to try")
    metric: str = Field("auroc", description="the fold-mean metric the best point maximises: a name of "
                                             "deepprune.metric_names.rate_names(judge.fnr, judge.threshold)")
    register_as: str | None = Field("deepprune-judge", description="MLflow registered model name (null: none)")

    @field_validator("grid")
    @classmethod
    def _grid_nonempty(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"grid.{key} has no values")
        return value


class AblateConfig(_Strict):
    """Truncation ablation (Figure 4) and the training-variant table (Table 1) over every prefix label built."""

    variants: list[str] = Field(description="judge variants evaluated at every (strategy, k)")
    judge: str = Field(description="the variant plotted against k (Figure 4)")
    table_k: dict[Literal["tokens", "reasoning_words"], int] = Field(
        description="the k of each strategy shown in Table 1 (the paper: 500 tokens, 25 reasoning words)")

    @model_validator(mode="after")
    def _judge_in_variants(self) -> "AblateConfig":
        if self.judge not in self.variants:
            raise ValueError(f"judge {self.judge!r} must be one of variants {self.variants}")
        return self


class DeepConfConfig(_Strict):
    """DeepConf (Fu et al. 2025), DESIGN.md section 4; runs only on traces that carry logprobs."""

    window: int = Field(32, ge=1, description="sliding window of token confidences (the paper: 2048)")
    warmup: int = Field(3, ge=1, description="warm-up traces that run to completion and set the threshold "
                                             "(the paper: 16)")
    low_eta: float = Field(10, gt=0, le=100, description="DeepConf-low keeps the top eta%")
    high_eta: float = Field(90, gt=0, le=100, description="DeepConf-high keeps the top eta%")
    consensus: float | None = Field(None, gt=0, le=1, description="stop sampling once one answer holds this share "
                                                                  "of the vote (the paper's 0.95; null: off)")


class TuneConfig(_Strict):
    """tau picked without peeking: for each grouped fold, the tau of `grid` that saves the most tokens on the other
    folds' problems while keeping their accuracy change against cons@N at or above `target_change_pts`."""

    target_change_pts: float = Field(-1.0, le=0, description="the accuracy change (points, vs cons@N) tau must keep "
                                                             "on the training folds")
    grid: list[Probability] = Field(min_length=1, description="the taus tried on the training folds")


class PruneConfig(_Strict):
    """The online pruning evaluation, replayed on held-out judge scores (DESIGN.md sections 1 and 4)."""

    judge: str = Field(description="the judge variant whose out-of-fold scores drive DeepPrune")
    n: int | None = Field(None, ge=1, description="traces per problem per draw (null: all that are available)")
    repetitions: int = Field(20, ge=1, description="seeded draws (arrival orders) per method; 95% intervals over them")
    taus: list[Probability] = Field(min_length=1, description="DeepPrune thresholds, one method each (the paper's "
                                                              "Table 3 grid)")
    tau: float = Field(0.5, ge=0, le=1, description="the headline DeepPrune threshold (its budget is what random "
                                                     "pruning matches)")
    r: int = Field(1, ge=1, description="cluster members a new trace is compared with")
    q: int = Field(2, ge=0, description="members of the largest cluster resumed to completion for the vote")
    max_clusters: int | None = Field(None, ge=1, description="cap on clusters (null: none)")
    vote: VoteRule = Field("all_completed", description=VOTE_HELP)
    sbert_taus: list[Cosine] = Field(description="cosine thresholds for SBERT clustering, one method each")
    esc_window: int = Field(4, ge=1, description="ESC: traces per window")
    tune: TuneConfig | None = Field(description="a DeepPrune method whose tau is picked on the training folds "
                                                       "(null: none)")
    settle_window: int = Field(4, ge=1, description="settle (ours): traces started per window; sampling stops after "
                                                     "a window that seeds no new cluster (at tau)")
    deepconf: DeepConfConfig = DeepConfConfig()

    @model_validator(mode="after")
    def _headline_in_grid(self) -> "PruneConfig":
        if self.tau not in self.taus:
            raise ValueError(f"tau {self.tau} must be one of taus {self.taus}")
        if self.n is not None and self.deepconf.warmup >= self.n:
            raise ValueError(f"prune.deepconf.warmup ({self.deepconf.warmup}) must be below prune.n ({self.n}): "
                             "with W >= N DeepConf never stops a trace and equals cons@N")
        return self


class OnlineJudgeConfig(_Strict):
    corpus: str = Field(description="the corpus whose judge stage saved the model (data/judge/<corpus>/models/)")
    variant: str = Field(description="a judge.variants name: an encoder variant the judge stage saved, or an "
                                     "sbert_cosine one (nothing to load)")


class OnlineDeepConfConfig(_Strict):
    warmup: int = Field(2, ge=1, description="warm-up traces that run to the end and set the threshold")
    eta: float = Field(90, gt=0, le=100, description="keep the top eta%: DeepConf-high is 90")
    window: int = Field(16, ge=1, description="sliding window of token confidences")
    consensus: float | None = Field(None, gt=0, le=1, description="stop sampling once one answer holds this share "
                                                                  "of the vote (the paper's 0.95; null: off)")


class OnlineConfig(_Strict):
    """True online pruning with real generation (engine: `sample`): cons@N, DeepPrune online (one run per tau) and
    DeepConf online on the same problems and trace seeds."""

    corpora: list[str] = Field(description="live corpora whose problems are generated on")
    problems: int = Field(1, ge=1, description="the first problems of each corpus")
    n: int | None = Field(4, ge=2, description="traces per problem (null: sample.n)")
    max_tokens: int | None = Field(96, ge=2, description="token budget per trace (null: sample.generation.max_tokens)")
    k: int = Field(ge=1, description="tokens every trace generates before the judge sees the prefixes")
    judge: OnlineJudgeConfig
    taus: list[Probability] = Field(min_length=1, description="DeepPrune thresholds, one online run each")
    r: int = Field(1, ge=1, description="cluster members a new trace is compared with")
    q: int = Field(2, ge=0, description="members of the largest cluster resumed to completion for the vote")
    max_clusters: int | None = Field(None, ge=1, description="cap on clusters (null: none)")
    vote: VoteRule = Field("all_completed", description=VOTE_HELP)
    deepconf: OnlineDeepConfConfig = OnlineDeepConfConfig()


class ReportConfig(_Strict):
    title: str = "DeepPrune Lab report"


class TrackingConfig(_Strict):
    """How long a run waits on an unreachable MLflow tracking server or Prefect API before it fails: their own
    defaults retry for minutes. Applied through MLflow's and Prefect's settings; a variable the environment sets wins."""

    retries: int = Field(2, ge=0, le=10, description="retries of a failed request (MLflow refuses more than 10)")
    timeout_s: int = Field(5, ge=1, description="seconds a request, and the reachability check a run starts with, "
                                                "waits for an answer")
    backoff_factor: int = Field(1, ge=0, le=120, description="MLflow waits backoff_factor * 2**(n - 1) s before its "
                                                             "n-th retry (MLflow refuses more than 120); Prefect "
                                                             "waits 2**n s, not configurable")


class ClusterConfig(_Strict):
    """Where a stage's independent cells run (sweep points, ablation truncations, transfer pairs): threads of the
    stage process, or the workers of a running Dask or Ray cluster. Results are the same bytes on every runner (each
    worker computes with `threads` torch threads and loads its inputs from the project's paths), so no stage lists
    these keys in dvc.yaml."""

    task_runner: Literal["threads", "dask", "ray"] = Field("threads", description="threads | dask (prefect-dask) | ray "
                                                                                    "(prefect-ray)")
    address: str | None = Field(None, description="dask: the scheduler (tcp://127.0.0.1:8786); ray: the head's "
                                                  "address (127.0.0.1:6379 from a machine of the cluster, "
                                                  "ray://host:10001 through Ray Client); null: a local cluster of "
                                                  "max_workers processes started for the stage")
    max_workers: int = Field(2, ge=1, description="threads, or the processes of a local cluster")

    @model_validator(mode="after")
    def _address_fits(self) -> "ClusterConfig":
        if self.task_runner == "threads" and self.address is not None:
            raise ValueError(f"address {self.address!r} is for a dask or ray cluster; task_runner is 'threads'")
        if self.task_runner == "dask" and self.address is not None and "://" not in self.address:
            raise ValueError(f"address {self.address!r}: a Dask scheduler address is tcp://host:port")
        if self.task_runner == "ray" and self.address is not None and self.address.startswith("tcp://"):
            raise ValueError(f"address {self.address!r}: a Ray head's address is host:port, ray://host:port or auto")
        return self


class Params(_Strict):
    seed: int
    threads: int = Field(ge=1, description="CPU threads of every torch computation (deepprune.compute.fix_threads)")
    corpora: dict[str, CorpusConfig]
    sample: SampleConfig
    label: LabelConfig
    judge: JudgeConfig
    prune: PruneConfig
    judge_lm: JudgeLMConfig
    sweep: SweepConfig
    ablate: AblateConfig
    online: OnlineConfig
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()
    cluster: ClusterConfig = ClusterConfig()

    @field_validator("corpora")
    @classmethod
    def _corpus_names(cls, value: dict[str, CorpusConfig]) -> dict[str, CorpusConfig]:
        for name in value:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"corpus name {name!r}: use letters, digits and _ only (it names files)")
        return value

    @model_validator(mode="after")
    def _prune_judge_exists(self) -> "Params":
        if self.prune.judge not in self.judge.variants:
            raise ValueError(f"prune.judge {self.prune.judge!r} is not one of judge.variants {sorted(self.judge.variants)}")
        for name in self.corpora:
            own = self.corpora[name].tokens_k is not None
            built = {"tokens": self.tokens_k(name), "reasoning_words": self.label.reasoning_words_k}
            source = {"tokens": f"corpora.{name}.tokens_k" if own else "label.tokens_k",
                      "reasoning_words": "label.reasoning_words_k"}
            checks = [(f"corpora.{name}.truncation" if self.corpora[name].truncation else "judge.truncation",
                       self.truncation(name))]
            if name in self.judge_lm.corpora:
                checks.append(("judge_lm.truncation", self.judge_lm.truncation))
            for where, trunc in checks:
                if trunc.k not in built[trunc.strategy]:
                    raise ValueError(f"{where}: corpus {name!r} has no {trunc.strategy} prefix with k={trunc.k} "
                                     f"({source[trunc.strategy]} is {built[trunc.strategy]})")
            for strategy, k in self.ablate.table_k.items():
                if k not in built[strategy]:
                    raise ValueError(f"ablate.table_k.{strategy}: corpus {name!r} has no k={k} ({source[strategy]} is "
                                     f"{built[strategy]})")
        for where, names in (("judge_lm.compare", self.judge_lm.compare), ("ablate.variants", self.ablate.variants)):
            for name in names:
                if name not in self.judge.variants:
                    raise ValueError(f"{where}: {name!r} is not one of judge.variants {sorted(self.judge.variants)}")
        for where, names in (("judge_lm.corpora", self.judge_lm.corpora), ("online.corpora", self.online.corpora),
                             ("online.judge.corpus", [self.online.judge.corpus])):
            for name in names:
                if name not in self.corpora:
                    raise ValueError(f"{where}: {name!r} is not one of corpora {sorted(self.corpora)}")
        judged_by = self.online.judge.corpus
        if self.online.corpora and self.truncation(judged_by).strategy != "tokens":
            where = f"corpora.{judged_by}.truncation" if self.corpora[judged_by].truncation else "judge.truncation"
            raise ValueError(f"{where}: online.judge.corpus {judged_by!r} has its judges trained on "
                             f"{self.truncation(judged_by).strategy} prefixes, but the online stage shows its judge "
                             f"the first online.k tokens of each trace; give that corpus strategy 'tokens'")
        for name in self.online.corpora:
            if self.corpora[name].importer != "live":
                raise ValueError(f"online.corpora: {name!r} is a recorded corpus (importer "
                                 f"{self.corpora[name].importer!r}); online pruning generates, so it needs a live one")
        if self.online.judge.variant not in self.judge.variants:
            raise ValueError(f"online.judge.variant: {self.online.judge.variant!r} is not one of judge.variants "
                             f"{sorted(self.judge.variants)}")
        check_rate_name("sweep.metric", self.sweep.metric, self.judge.fnr, self.judge.threshold)
        max_tokens = self.online.max_tokens or self.sample.generation.max_tokens
        if self.online.k >= max_tokens:
            raise ValueError(f"online.k ({self.online.k}) must be below the token budget ({max_tokens})")
        for name, corpus in self.corpora.items():  # grouped folds need a problem per fold (label.folds)
            own = getattr(corpus, "limit", None)  # a corpus's own limit overrides sample.limit
            key, limit = (f"corpora.{name}.limit", own) if own is not None else ("sample.limit", self.sample.limit)
            if limit is not None and limit < self.label.folds:
                raise ValueError(f"{key} ({limit}) keeps fewer problems of corpus {name!r} than label.folds "
                                 f"({self.label.folds}): grouped folds need a problem each")
        online_n, n_key = (self.online.n, "online.n") if self.online.n else (self.sample.n, "sample.n")
        if self.online.deepconf.warmup >= online_n:
            raise ValueError(f"online.deepconf.warmup ({self.online.deepconf.warmup}) must be below {n_key} "
                             f"({online_n}): with W >= N DeepConf never stops a trace and equals cons@N")
        return self

    def truncation(self, corpus: str) -> TruncationConfig:
        """The prefix the embedding judges of `corpus` see (its own, else judge.truncation)."""
        return self.corpus(corpus).truncation or self.judge.truncation

    def tokens_k(self, corpus: str) -> list[int]:
        """The first-k-tokens prefixes the label stage builds for `corpus` (its own, else label.tokens_k)."""
        own = self.corpus(corpus).tokens_k
        return list(own) if own is not None else list(self.label.tokens_k)

    def corpus(self, name: str) -> CorpusConfig:
        """The named corpus, or a clear error listing the known ones."""
        if name not in self.corpora:
            raise KeyError(f"unknown corpus {name!r}; params.yaml defines {sorted(self.corpora)}")
        return self.corpora[name]


class ConfigError(ValueError):
    """params.yaml does not match the schema; the message names the file and the key path."""


def read_params(path: str | os.PathLike = "params.yaml") -> Any:
    """params.yaml as plain data, read the way DVC reads and writes it: YAML 1.2 (ruamel.yaml, DVC's own parser).

    `dvc exp run -S` rewrites params.yaml with ruamel's round-trip writer, which drops quotes that YAML 1.2 does not
    need: `"yes": "yes"` comes back as `yes: yes`. A YAML 1.1 reader (PyYAML) would turn that into booleans, so
    every reader of params in this project goes through here and agrees with DVC on every value. Like DVC, it parses
    with ruamel's C parser (ruamel.yaml.clib, 5x faster on params.yaml) where installed, and reads YAML 1.2 either
    way (a `%YAML 1.1` directive is not honoured by the C parser, as it is not by DVC with it).
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    try:
        return YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    raw = read_params(path)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid params:\n" + "\n".join(lines)) from None


def set_scalars(text: str, updates: dict[str, Any]) -> str:
    """params.yaml's text with `section.key` scalars set in place (`make use-cluster`): only the value on each key's
    own line changes, its comment and every other line kept. A key that is not there, or whose value is not a scalar
    on its line, is an error naming it (edit params.yaml by hand for those)."""
    import json
    import re

    lines = text.splitlines(keepends=True)
    for dotted, value in updates.items():
        section, _, key = dotted.partition(".")
        if not key or "." in key:
            raise ConfigError(f"{dotted}: set a key of a top-level section, section.key")
        start = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(section)}:\s*(#.*)?$", line)), None)
        if start is None:
            raise ConfigError(f"params.yaml has no section {section!r} to set {dotted} in")
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"[^\s#]", lines[i])), len(lines))
        pattern = re.compile(rf"(  {re.escape(key)}:[ \t]*)([^#\n]*?)([ \t]*)(#.*)?(\r?\n)?$")
        for i in range(start + 1, end):
            match = pattern.match(lines[i])
            if match:
                below = next((line for line in lines[i + 1:end] if line.strip() and not line.lstrip().startswith("#")),
                             "")
                nested = not match.group(2) and re.match(r"(   |  - )", below) is not None  # a block below it
                if match.group(2).startswith(("[", "{", "|", ">")) or nested:
                    raise ConfigError(f"params.yaml {dotted}: not a scalar on its own line; edit the file by hand")
                new = "null" if value is None else json.dumps(value) if not isinstance(value, str) else value
                if isinstance(value, str) and (not re.fullmatch(r"[\w./:@-]+", value) or value in ("null", "true",
                                                                                                     "false")):
                    new = json.dumps(value)
                pad = max(1, match.start(4) - len(match.group(1)) - len(new)) if match.group(4) else 0  # its column
                head = match.group(1) if match.group(1).endswith((" ", "\t")) else match.group(1) + " "
                lines[i] = (head + new + (" " * pad + match.group(4) if match.group(4) else "")
                            + (match.group(5) or ""))
                break
        else:
            raise ConfigError(f"params.yaml has no key {key!r} under {section!r}")
    return "".join(lines)
