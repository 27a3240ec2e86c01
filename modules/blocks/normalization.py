"""Normalization layers that compute in float32, and zero initialisation.

Under bf16/fp16 autocast (and in a model cast to bf16) the statistics of GroupNorm and LayerNorm lose
precision; the ldm UNet therefore computes GroupNorm in float32 (`GroupNorm32`). CPU autocast keeps both
norms in the low-precision dtype, so the casts here are explicit. State-dict keys are those of the torch
layers they subclass (`weight`, `bias`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# ldm's `normalization(channels)` and the VAE's `Normalize` both use 32 groups.
NUM_GROUPS = 32


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype. x: `[B, C, ...]`."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last axis computed in float32 and cast back. x: `[B, L, C]`."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def group_norm(channels: int, eps: float = 1e-5) -> GroupNorm32:
    """The UNet's `normalization(channels)`: 32-group GroupNorm in float32 (eps 1e-5 in ldm's UNet, 1e-6 in
    its SpatialTransformer and VAE)."""
    return GroupNorm32(NUM_GROUPS, channels, eps=eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero and return it (ldm: output convs start at zero)."""
    for parameter in module.parameters():
        parameter.detach().zero_()
    return module
