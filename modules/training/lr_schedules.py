"""Learning-rate schedules as `LambdaLR` factories, configured with `_partial_: true` in conf/model/*.yaml."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up from 0 to the base LR over `warmup_steps`, then a half cosine down to
    `min_lr_ratio * base LR` at `total_steps` (SCVideo appendix, Training: 1000 warm-up steps). A run shorter
    than its warm-up (a debug run) simply ends while still warming up."""
    if warmup_steps < 0 or total_steps <= 0:
        raise ValueError(
            f"need warmup_steps >= 0 and total_steps > 0, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps} <model.lr_scheduler>"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant_with_warmup(optimizer: Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then constant (ldm's LambdaLinearScheduler with f_max = f_min = 1)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps} <model.lr_scheduler.warmup_steps>")

    def factor(step: int) -> float:
        return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps

    return LambdaLR(optimizer, factor)
