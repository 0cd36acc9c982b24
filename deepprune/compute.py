"""Where tensor arithmetic runs: the CPU thread count every stage fixes, and the device names params accept.

A float reduction split over 2 threads adds in another order than over 1 or 16, so model outputs (embeddings,
judge scores, sampled tokens) change in their last bits with the thread count. Every stage that computes with
torch therefore uses `params.yaml` `threads`, not the machine's core count: a clone on another machine with the
same CPU instruction set reproduces the committed outputs bit for bit.
"""

from __future__ import annotations

import os
import re
import sys

# params' device fields: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def fix_threads(n: int) -> None:
    """Make this process's torch (and BLAS) arithmetic use n intra-op threads, whether or not torch is imported
    yet: the variables are read when a library starts its thread pool, and a loaded torch is told directly."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def check_device(value: str) -> str:
    """The device name if params may use it, else a ValueError that lists the accepted forms."""
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value
