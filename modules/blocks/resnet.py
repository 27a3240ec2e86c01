"""Residual and resampling blocks of the SD UNet (ldm openaimodel names: `in_layers`, `emb_layers`,
`out_layers`, `skip_connection`, `op`, `conv`), and the `TimestepEmbedSequential` container."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from modules.blocks.block_kinds import ContextBlock, TimestepBlock
from modules.blocks.checkpointing import checkpointed_call
from modules.blocks.normalization import group_norm, zero_module


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning.

    h = in_layers(x) = conv3x3(SiLU(GroupNorm(x))); h = h + emb_layers(emb)[:, :, None, None];
    h = out_layers(h) = conv3x3(Dropout(SiLU(GroupNorm(h)))) (conv zero-initialised);
    return skip_connection(x) + h, with a 1x1 conv skip when the channel count changes.
    x: `[N, channels, H, W]`, emb: `[N, emb_channels]` -> `[N, out_channels, H, W]`.

    Subclasses (e.g. a video block adding a temporal conv) override `_forward(x, emb, **block_kwargs)` and
    keep these submodules so SD weights load; `forward` wraps `_forward` in gradient checkpointing.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.channels = channels
        self.out_channels = out_channels
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, kernel_size=3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor, emb: Tensor, **block_kwargs: Any) -> Tensor:
        return checkpointed_call(self._forward, x, emb, enabled=self.use_checkpoint, **block_kwargs)

    def _forward(self, x: Tensor, emb: Tensor, **block_kwargs: Any) -> Tensor:
        hidden = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(hidden.dtype)
        hidden = hidden + emb_out[:, :, None, None]
        hidden = self.out_layers(hidden)
        return self.skip_connection(x) + hidden


class Downsample(nn.Module):
    """Stride-2 3x3 conv (`op`, padding 1). `[N, C, H, W] -> [N, out_channels, ceil(H/2), ceil(W/2)]`."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.op = nn.Conv2d(channels, out_channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv (`conv`). `[N, C, H, W] -> [N, C', 2H, 2W]`."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A UNet stage: calls each layer by its kind (see `modules.blocks.block_kinds`).

    TimestepBlock layers get `(x, emb, **block_kwargs)`, ContextBlock layers `(x, context, **block_kwargs)`,
    other layers `(x)`. x: `[N, C, H, W]`.
    """

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None, **block_kwargs: Any) -> Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb, **block_kwargs)
            elif isinstance(layer, ContextBlock):
                x = layer(x, context, **block_kwargs)
            else:
                x = layer(x)
        return x
