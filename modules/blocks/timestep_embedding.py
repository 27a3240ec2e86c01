"""Sinusoidal timestep embedding of the ldm/openaimodel UNet (cos first, max period 10000)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_PERIOD = 10000.0


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = MAX_PERIOD) -> Tensor:
    """Embed integer (or fractional) timesteps `[N]` into `[N, dim]` float32 features.

    half = dim // 2, freqs_k = exp(-ln(max_period) * k / half) for k = 0..half-1,
    emb = cat[cos(t * freqs), sin(t * freqs)] (cos first, as ldm's openaimodel); an odd `dim` gets a zero
    last column.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timestep_embedding: timesteps must have shape [N], got {tuple(timesteps.shape)}")
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    args = timesteps.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2 == 1:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding
