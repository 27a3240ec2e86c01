"""Building blocks of the LDM AutoencoderKL (ldm `diffusionmodules/model.py` names: `norm1`, `conv1`,
`norm2`, `conv2`, `nin_shortcut`; attention `norm`, `q`, `k`, `v`, `proj_out`; `downsample.conv`)."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from modules.blocks.attention import dot_product_attention
from modules.blocks.normalization import group_norm

# ldm's `Normalize`: GroupNorm(32, C, eps=1e-6).
VAE_NORM_EPS = 1e-6


class VAEResnetBlock(nn.Module):
    """Residual block without timestep input. `[B, in_channels, H, W] -> [B, out_channels, H, W]`.

    h = conv2(Dropout(SiLU(norm2(conv1(SiLU(norm1(x))))))); return nin_shortcut(x) + h, with a 1x1 conv
    shortcut only when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.norm1 = group_norm(in_channels, eps=VAE_NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, eps=VAE_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels == out_channels:
            self.nin_shortcut: nn.Module = nn.Identity()
        else:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.conv1(F.silu(self.norm1(x)))
        hidden = self.conv2(self.dropout(F.silu(self.norm2(hidden))))
        return self.nin_shortcut(x) + hidden


class VAEAttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions with 1x1-conv projections, residual.

    `[B, C, H, W] -> [B, C, H, W]`; softmax(q k^T / sqrt(C)) v as ldm's `AttnBlock`.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, eps=VAE_NORM_EPS)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        hidden = self.norm(x)
        query, key, value = (
            rearrange(projection(hidden), "b c h w -> b 1 (h w) c") for projection in (self.q, self.k, self.v)
        )
        attended = dot_product_attention(query, key, value)
        return x + self.proj_out(rearrange(attended, "b 1 (h w) c -> b c h w", h=height, w=width))


class AsymmetricDownsample(nn.Module):
    """ldm's encoder downsample: zero-pad right and bottom by one (pad (0, 1, 0, 1)), then a stride-2 3x3 conv
    without padding. `[B, C, H, W] -> [B, C, H/2, W/2]` for even H, W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
