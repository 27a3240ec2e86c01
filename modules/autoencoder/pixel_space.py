"""A lossless, parameter-free first stage for the CPU toy runs.

Why: the default entry points must run on a laptop with no downloads, and there are no pretrained VAE weights
there; a randomly initialised AutoencoderKL cannot be decoded back to a meaningful video. Pixel unshuffle
(space-to-depth) is an exactly invertible "autoencoder": `[B, 3, H, W] -> [B, 3 f^2, H/f, W/f]`, so the toy
diffusion model still works on a small latent grid and what it generates is decoded exactly. It has the same
API as `AutoencoderKL` (encode/decode/encode_video/decode_video, `latent_channels`, `downsample_factor`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.autoencoder.frame_chunks import map_frame_chunks


class PixelUnshuffleAutoencoder(nn.Module):
    """Space-to-depth first stage: latents are `scale_factor * (pixel_unshuffle(x, factor) - shift_factor)`.

    As with the SD VAE's 0.18215, shift and scale should give the training data's latents zero mean and unit
    variance: the noise schedule's signal-to-noise ratios assume unit-variance data, and data with a small
    variance is drowned by the noise at most timesteps, which leaves the model untrained where sampling starts.

    Args:
        factor: spatial downsampling factor f (2 for the tiny backbone: 16x16 latents with 12 channels from
            32x32 RGB frames).
        scale_factor: multiplies the shifted latents; 1 / pixel std standardises them as SD's 0.18215 does, a
            smaller value adds noise to the whole schedule (the toy backbone uses 1, see conf/backbone/tiny.yaml).
        in_channels: image channels (3 for RGB).
        shift_factor: subtracted before scaling (the data's mean pixel value in [-1, 1]).
    """

    def __init__(
        self, factor: int = 2, scale_factor: float = 1.0, in_channels: int = 3, shift_factor: float = 0.0
    ) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"PixelUnshuffleAutoencoder: factor must be >= 1, got {factor}")
        self.factor = factor
        self.scale_factor = scale_factor
        self.shift_factor = shift_factor
        self.latent_channels = in_channels * factor * factor
        self.moment_channels = self.latent_channels
        self.downsample_factor = factor

    def posterior_moments(self, x: Tensor) -> Tensor:
        """Images `[B, C, H, W]` -> unscaled latents `[B, C f^2, H/f, W/f]`: the whole (deterministic) posterior, as
        AutoencoderKL's (mean, logvar) moments are its (`moment_channels` = `latent_channels` here)."""
        factor = self.factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"PixelUnshuffleAutoencoder: frame size {x.shape[-2]}x{x.shape[-1]} is not divisible by the "
                f"downsampling factor {factor}; set `resolution` to a multiple of {factor}"
            )
        return F.pixel_unshuffle(x, factor) - self.shift_factor

    def sample_latent(self, moments: Tensor, sample: bool, generator: torch.Generator | None) -> Tensor:
        """Scaled latents from `posterior_moments`; deterministic (`sample`, `generator` as AutoencoderKL's)."""
        return self.scale_factor * moments

    def encode(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Images `[B, C, H, W]` -> latents `[B, C f^2, H/f, W/f]`. Deterministic: `sample` and `generator`
        exist for API compatibility with AutoencoderKL and are ignored."""
        return self.sample_latent(self.posterior_moments(x), sample, generator)

    def decode(self, z: Tensor) -> Tensor:
        """Latents `[B, C f^2, h, w]` -> images `[B, C, h f, w f]`; the exact inverse of `encode`."""
        return F.pixel_shuffle(z / self.scale_factor + self.shift_factor, self.factor)

    def encode_video(
        self,
        video: Tensor,
        chunk_size: int = 8,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Videos `[B, C, T, H, W]` -> latents `[B, C f^2, T, H/f, W/f]`, `chunk_size` frames at a time."""
        return map_frame_chunks(self.encode, video, chunk_size)

    def decode_video(self, z: Tensor, chunk_size: int = 8) -> Tensor:
        """Latents `[B, C f^2, T, h, w]` -> videos `[B, C, T, h f, w f]`, `chunk_size` frames at a time."""
        return map_frame_chunks(self.decode, z, chunk_size)
