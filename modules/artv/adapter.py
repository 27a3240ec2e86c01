"""T2I-Adapter (Mou et al. 2023) as ART-V uses it: the reference frames' latents -> one feature per UNet level.

ART-V supplementary, Table 1 "adapter_config" and "We adopt the default settings of T2I-Adapter except for channel
settings": channels [320, 640, 1280, 1280] (Φdynamic) / [64, 128, 256, 256] (Φmask), nums_rb 2, cin 8, ksize 1,
sk True, use_conv False. State-dict keys and shapes equal the original `Adapter` (no prefix; see
tests/fixtures/reference/t2i_adapter_artv_{dynamic,mask}.json):

    conv_in                       conv3x3(cin -> channels[0])
    body.{level * nums_rb + j}    AdapterResBlock: [downsample], [in_conv 1x1 where channels change],
                                  block1 conv3x3, ReLU, block2 conv(ksize), + residual

Our interpretation (not stated by the paper; docs/ARCHITECTURE.md, "ART-V: what the paper does not state"):
the adapter input is the latents of the two reference frames concatenated on channels (2 x 4 = 8 = cin),
already at latent resolution. The original adapter reads a pixel-space condition image through
PixelUnshuffle(8); here conv_in sees the 8-channel latent directly, so the features come out at 1/1, 1/2, 1/4,
1/8 of the latent size, the resolutions of the UNet's levels, and are added to the UNet encoder at the end of
each level (`UNetModel.forward(adapter_features=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class AdapterResBlock(nn.Module):
    """One residual block of the adapter body (T2I-Adapter's `ResnetBlock` with `sk=True`).

    x `[B, in_channels, H, W]` -> `[B, out_channels, H', W']` with H' = H / 2 when `downsample`, else H:
    optional downsampling (2x2 average pooling, or a stride-2 3x3 conv `down_opt.op` when `use_conv`), a 1x1
    `in_conv` when the channel count changes, then `h + block2(relu(block1(h)))` (identity skip).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        downsample: halve the resolution first (the first block of every level after the first).
        ksize: kernel size of `block2` and `in_conv` (Table 1: 1).
        use_conv: downsample with a learned conv instead of average pooling (Table 1: False).
    """

    def __init__(
        self, in_channels: int, out_channels: int, downsample: bool, ksize: int, use_conv: bool
    ) -> None:
        super().__init__()
        padding = ksize // 2
        self.downsample = downsample
        self.use_conv = use_conv
        if downsample and use_conv:
            self.down_opt = nn.Module()
            self.down_opt.op = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1)
        self.in_conv = (
            nn.Conv2d(in_channels, out_channels, kernel_size=ksize, padding=padding)
            if in_channels != out_channels
            else None
        )
        self.block1 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.block2 = nn.Conv2d(out_channels, out_channels, kernel_size=ksize, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample:
            x = self.down_opt.op(x) if self.use_conv else F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class T2IAdapter(nn.Module):
    """T2I-Adapter feature pyramid: `[B, cin, h, w]` -> `len(channels)` features `[B, channels[l], h / 2**l, w / 2**l]`.

    Args:
        channels: width of each level, equal to the UNet's `model_channels * channel_mult[level]` (ART-V
            supplementary Table 1: [320, 640, 1280, 1280] for Φdynamic, [64, 128, 256, 256] for Φmask).
        nums_rb: residual blocks per level (Table 1: 2).
        cin: input channels (Table 1: 8 = two reference latents of 4 channels).
        ksize: kernel size of `block2` / `in_conv` (Table 1: 1).
        sk: identity skip connections (Table 1: True; the only variant implemented).
        use_conv: downsample with a stride-2 conv instead of average pooling (Table 1: False).
    """

    def __init__(
        self,
        channels: Sequence[int],
        nums_rb: int = 2,
        cin: int = 8,
        ksize: int = 1,
        sk: bool = True,
        use_conv: bool = False,
    ) -> None:
        super().__init__()
        if not sk:
            raise ValueError(
                "T2IAdapter: only the identity-skip variant (sk=True, ART-V supplementary Table 1) is "
                "implemented; set adapter sk: true"
            )
        if nums_rb < 1 or not channels:
            raise ValueError(
                f"T2IAdapter: need nums_rb >= 1 and at least one level, got {nums_rb}, {channels}"
            )
        if ksize % 2 != 1:
            raise ValueError(f"T2IAdapter: ksize must be odd to keep the resolution, got {ksize}")
        self.channels = [int(width) for width in channels]
        self.nums_rb = nums_rb
        self.cin = cin
        self.conv_in = nn.Conv2d(cin, self.channels[0], kernel_size=3, padding=1)
        blocks = []
        for level, width in enumerate(self.channels):
            for index in range(nums_rb):
                first_of_lower_level = level > 0 and index == 0
                in_width = self.channels[level - 1] if first_of_lower_level else width
                blocks.append(AdapterResBlock(in_width, width, first_of_lower_level, ksize, use_conv))
        self.body = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: `[B, cin, h, w]` -> one feature per level, `[B, channels[l], h / 2**l, w / 2**l]`."""
        if x.ndim != 4 or x.shape[1] != self.cin:
            raise ValueError(f"T2IAdapter: input must be [B, {self.cin}, h, w], got {tuple(x.shape)}")
        hidden = self.conv_in(x)
        features = []
        for level in range(len(self.channels)):
            for index in range(self.nums_rb):
                hidden = self.body[level * self.nums_rb + index](hidden)
            features.append(hidden)
        return features
