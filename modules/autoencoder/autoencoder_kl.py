"""AutoencoderKL: the LDM/SD first stage (Rombach et al. 2022), with frame-chunked video encode/decode.

Parameter names equal the SD checkpoints' `first_stage_model.*` keys (after stripping the prefix):
`encoder.{conv_in, down.i.{block.j, attn.j, downsample}, mid.{block_1, attn_1, block_2}, norm_out, conv_out}`,
`decoder.{conv_in, mid.*, up.i.{block.j, attn.j, upsample}, norm_out, conv_out}`, `quant_conv`,
`post_quant_conv`. As in ldm, `decoder.up` is indexed by level, so `decoder.up.0` is the full-resolution level
and runs last, `decoder.up.{len(ch_mult) - 1}` the lowest resolution and runs first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.autoencoder.frame_chunks import map_frame_chunks
from modules.autoencoder.vae_blocks import (
    VAE_NORM_EPS,
    AsymmetricDownsample,
    VAEAttentionBlock,
    VAEResnetBlock,
)
from modules.blocks.normalization import group_norm
from modules.blocks.resnet import Upsample


class MidBlock(nn.Module):
    """Resnet block, self-attention, resnet block at the lowest resolution. `[B, C, h, w] -> [B, C, h, w]`."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = VAEResnetBlock(channels, channels, dropout)
        self.attn_1 = VAEAttentionBlock(channels)
        self.block_2 = VAEResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class ResolutionLevel(nn.Module):
    """One level of the encoder or decoder: resnet blocks (`block.j`), each followed by attention (`attn.j`)
    when the level's resolution is in attn_resolutions, then an optional resampler (`downsample`/`upsample`)."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        num_blocks: int,
        with_attention: bool,
        dropout: float,
        downsample: nn.Module | None = None,
        upsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            VAEResnetBlock(channels_in if index == 0 else channels_out, channels_out, dropout)
            for index in range(num_blocks)
        )
        self.attn = nn.ModuleList(
            VAEAttentionBlock(channels_out) for _ in range(num_blocks if with_attention else 0)
        )
        self.downsample = downsample
        self.upsample = upsample

    def forward(self, x: Tensor) -> Tensor:
        for index, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[index](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """Image `[B, in_channels, H, W]` -> posterior moments `[B, 2 * z_channels (double_z), H / f, W / f]`,
    f = 2 ** (len(ch_mult) - 1)."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        channels = ch
        current_resolution = resolution
        for level, mult in enumerate(ch_mult):
            is_last = level == len(ch_mult) - 1
            self.down.append(
                ResolutionLevel(
                    channels,
                    ch * mult,
                    num_res_blocks,
                    current_resolution in attn_resolutions,
                    dropout,
                    downsample=None if is_last else AsymmetricDownsample(ch * mult),
                )
            )
            channels = ch * mult
            if not is_last:
                current_resolution //= 2
        self.mid = MidBlock(channels, dropout)
        self.norm_out = group_norm(channels, eps=VAE_NORM_EPS)
        self.conv_out = nn.Conv2d(
            channels, 2 * z_channels if double_z else z_channels, kernel_size=3, padding=1
        )

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.conv_in(x)
        for stage in self.down:
            hidden = stage(hidden)
        hidden = self.mid(hidden)
        return self.conv_out(F.silu(self.norm_out(hidden)))


class Decoder(nn.Module):
    """Latent `[B, z_channels, h, w]` -> image `[B, out_ch, h * f, w * f]`, f = 2 ** (len(ch_mult) - 1)."""

    def __init__(
        self,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        resolution: int,
        z_channels: int,
    ) -> None:
        super().__init__()
        channels = ch * ch_mult[-1]
        current_resolution = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, channels, kernel_size=3, padding=1)
        self.mid = MidBlock(channels, dropout)
        levels: list[ResolutionLevel] = []
        for level in reversed(range(len(ch_mult))):
            levels.insert(
                0,
                ResolutionLevel(
                    channels,
                    ch * ch_mult[level],
                    num_res_blocks + 1,
                    current_resolution in attn_resolutions,
                    dropout,
                    upsample=None if level == 0 else Upsample(ch * ch_mult[level]),
                ),
            )
            channels = ch * ch_mult[level]
            if level != 0:
                current_resolution *= 2
        # Stored by level as in ldm (up.0 = full resolution); run from the last level to the first.
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(channels, eps=VAE_NORM_EPS)
        self.conv_out = nn.Conv2d(channels, out_ch, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        hidden = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            hidden = stage(hidden)
        return self.conv_out(F.silu(self.norm_out(hidden)))


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder of latent diffusion (first stage of SD 1.x / 2.x; ART-V supplementary
    Table 3). Latents are returned scaled by `scale_factor` (0.18215 for SD), as the diffusion model sees them.

    Arguments are ldm's `ddconfig` plus `embed_dim` and `scale_factor`; `resolution` only decides where
    `attn_resolutions` (pixel resolutions) put attention and is not a limit on the input size.
    """

    def __init__(
        self,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        z_channels: int = 4,
        embed_dim: int = 4,
        in_channels: int = 3,
        out_ch: int = 3,
        resolution: int = 256,
        attn_resolutions: Sequence[int] = (),
        double_z: bool = True,
        dropout: float = 0.0,
        scale_factor: float = 0.18215,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(mult) for mult in ch_mult)
        attn_resolutions = tuple(int(size) for size in attn_resolutions)
        if not double_z:
            raise ValueError(
                "AutoencoderKL: double_z must be true (the encoder outputs mean and log-variance)"
            )
        self.encoder = Encoder(
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            dropout,
            in_channels,
            resolution,
            z_channels,
            double_z,
        )
        self.decoder = Decoder(
            ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, dropout, resolution, z_channels
        )
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        self.scale_factor = scale_factor
        self.latent_channels = embed_dim
        self.moment_channels = 2 * embed_dim  # posterior (mean, logvar), what latent shards store
        self.downsample_factor = 2 ** (len(ch_mult) - 1)

    def posterior_moments(self, x: Tensor) -> Tensor:
        """Images `[B, 3, H, W]` in [-1, 1] -> unscaled posterior (mean, logvar) stacked on channels,
        `[B, 2 * embed_dim, H / f, W / f]`."""
        factor = self.downsample_factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"AutoencoderKL: frame size {x.shape[-2]}x{x.shape[-1]} is not divisible by the downsampling "
                f"factor {factor} (2 ** (len(ch_mult) - 1)); set `resolution` to a multiple of {factor}"
            )
        return self.quant_conv(self.encoder(x))

    def sample_latent(self, moments: Tensor, sample: bool, generator: torch.Generator | None) -> Tensor:
        """Scaled latent from moments `[..., 2 * embed_dim (dim 1), ...]`: scale * (mean + std * noise), or
        scale * mean when `sample` is False. logvar is clamped to [-30, 20] as in ldm."""
        mean, logvar = moments.chunk(2, dim=1)
        if not sample:
            return self.scale_factor * mean
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.scale_factor * (mean + std * noise)

    def encode(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Images `[B, 3, H, W]` in [-1, 1] -> scaled latents `[B, embed_dim, H / 8, W / 8]` (for f = 8).

        sample: draw from the posterior (training, as ldm); False returns the posterior mean.
        """
        return self.sample_latent(self.posterior_moments(x), sample, generator)

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents `[B, embed_dim, h, w]` -> images `[B, 3, h * 8, w * 8]` (unscaled first)."""
        return self.decoder(self.post_quant_conv(z / self.scale_factor))

    def encode_video(
        self,
        video: Tensor,
        chunk_size: int = 8,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Videos `[B, 3, T, H, W]` -> scaled latents `[B, embed_dim, T, H / 8, W / 8]`, encoding at most
        `chunk_size` frames at a time. The posterior noise is drawn once for the whole video, so the result
        does not depend on chunk_size."""
        moments = map_frame_chunks(self.posterior_moments, video, chunk_size)
        return self.sample_latent(moments, sample, generator)

    def decode_video(self, z: Tensor, chunk_size: int = 8) -> Tensor:
        """Scaled latents `[B, embed_dim, T, h, w]` -> videos `[B, 3, T, 8h, 8w]`, decoding at most `chunk_size`
        frames at a time."""
        return map_frame_chunks(self.decode, z, chunk_size)
