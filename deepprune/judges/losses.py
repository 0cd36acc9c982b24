"""Losses for judges. Focal loss (Lin et al. 2017), as DeepPrune trains its judge (DESIGN.md section 1):

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t),
    p_t = p if y = 1 else 1 - p,   alpha_t = alpha if y = 1 else 1 - alpha.

At gamma = 0 and alpha = 0.5 it is half the binary cross-entropy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from deepprune.config import TrainConfig


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


def recipe_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str, cfg: TrainConfig) -> torch.Tensor:
    """The loss a judge variant names ('focal', with cfg.focal's alpha and gamma, or 'ce'): one definition for
    every trainable judge (embedding head, fine-tuned encoder, cross-encoder)."""
    if loss == "focal":
        return focal_loss(logits, targets, cfg.focal.alpha, cfg.focal.gamma)
    return cross_entropy(logits, targets)
