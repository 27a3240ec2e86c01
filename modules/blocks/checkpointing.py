"""Per-block gradient checkpointing (activation recomputation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def checkpointed_call(function: Callable[..., Tensor], *args: Any, enabled: bool, **kwargs: Any) -> Tensor:
    """Call `function(*args, **kwargs)`, recomputing its activations in backward when `enabled`.

    Uses non-reentrant `torch.utils.checkpoint` (keyword arguments and frozen parameters are fine). With
    grad disabled (sampling) there is nothing to save, so the call is direct.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    return function(*args, **kwargs)
