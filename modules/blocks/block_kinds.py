"""The two kinds of UNet block that take more than a feature map, and how `TimestepEmbedSequential`
tells them apart.

A UNet stage (`input_blocks.i`, `middle_block`, `output_blocks.i`) is a `TimestepEmbedSequential` of
layers; each layer is called according to its kind:

- `TimestepBlock` (residual blocks): `layer(x, emb, **block_kwargs)`,
- `ContextBlock` (spatial transformers): `layer(x, context, **block_kwargs)`,
- anything else (Downsample, Upsample, the input conv): `layer(x)`.

`block_kwargs` are the extra keyword arguments of `UNetModel.forward` (e.g. `num_frames` for SCVideo,
`anchor_context` for ART-V); the 2D blocks accept and ignore them, video/ART-V blocks read what they need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn


class TimestepBlock(nn.Module, ABC):
    """A layer that also reads the timestep embedding."""

    @abstractmethod
    def forward(self, x: Tensor, emb: Tensor, **block_kwargs: Any) -> Tensor:
        """x: `[N, C, H, W]`; emb: `[N, E]` timestep embedding; returns `[N, C', H, W]`."""


class ContextBlock(nn.Module, ABC):
    """A layer that also reads the cross-attention context (text tokens)."""

    @abstractmethod
    def forward(self, x: Tensor, context: Tensor | None, **block_kwargs: Any) -> Tensor:
        """x: `[N, C, H, W]`; context: `[N, L, D]` or None (self-attention); returns `[N, C, H, W]`."""
