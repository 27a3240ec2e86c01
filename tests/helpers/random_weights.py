"""Random weights where a model starts at zero, so that every path of a tiny random model changes its output."""

from __future__ import annotations

import torch
from torch import nn


def randomize_zero_parameters(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Every parameter of `module` that is all zeros (output convs, temporal attention outputs, anchor-block
    projections) drawn from N(0, std^2) with a seeded generator; returns the module."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(std * torch.randn(parameter.shape, generator=generator))
    return module
