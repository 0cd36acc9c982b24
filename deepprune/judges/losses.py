"""Losses for judges. Focal loss (Lin et al. 2017), as DeepPrune trains its judge (DESIGN.md section 1):

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t),
    p_t = p if y = 1 else 1 - p,   alpha_t = alpha if y = 1 else 1 - alpha.

At gamma = 0 and alpha = 0.5 it is half the binary cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Mean binary focal loss of logits against 0/1 targets."""
    targets = targets.to(logits.dtype)
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    log_pt = targets * log_p + (1 - targets) * log_not_p
    pt = log_pt.exp()
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    return (-alpha_t * (1 - pt).pow(gamma) * log_pt).mean()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits against 0/1 targets."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
