#!/usr/bin/env bash
# GPU checks, one prepared run (about 10 minutes at most) for a machine with Python 3.12, PyTorch and
# transformers but no vLLM, Prefect, MLflow, DVC or network. Runs the core package alone:
#   1. the causal-LM judge: a random Qwen3 judge fine-tuned a few steps in bf16, then scoring (throughput);
#   2. live generation: a random ~0.5B Qwen3 on CUDA, N = 64 traces on a few prompts, cons@N vs DeepPrune
#      online vs DeepConf online side by side (tokens/s, token accounting, wall time).
# Usage: bash scripts/gpu_check.sh [output-dir]     (pydantic and ruamel.yaml must import; see README)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
python - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "transformers", "tokenizers", "numpy", "pydantic", "yaml") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing packages: {missing} (carry their wheels and pip install them)")
import torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"cuda {torch.cuda.is_available()} {torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}")
PY
timeout 240 python scripts/gpu_judge_check.py --size small --steps 8 --pairs 256 --batch 16 --k 128 \
  2>&1 | tee "$out/judge.txt"
timeout 420 python scripts/gpu_online_check.py --size 0.5b --n 64 --prompts 3 --max-tokens 256 --k 64 --batch 64 \
  2>&1 | tee "$out/online.txt"
