"""The optimiser of a training run: AdamW with its own learning rate for the CNN backbone, linear warm-up and cosine
decay, over the parameters ``TrainConfig.train_only`` leaves trainable."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

# The cosine decay ends at this fraction of the peak learning rate.
FINAL_LR_FRACTION = 0.01


def lr_factor(step: int, warmup_steps: int, total_steps: int, final_fraction: float = FINAL_LR_FRACTION) -> float:
    """Linear warm-up to 1, then cosine decay to ``final_fraction`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser and its per-step schedule; parameters outside ``config.train_only`` (when given) are frozen."""
    if config.train_only:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(config.train_only))
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone") and p.requires_grad]
    groups = [{"params": backbone, "lr": config.lr_backbone}, {"params": rest, "lr": config.lr}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup_steps, total_steps)
    )
    return optimizer, scheduler
