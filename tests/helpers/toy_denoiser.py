"""A third denoiser, written against `VideoDenoiser` alone: a per-pixel linear eps model of whole clips conditioned on
the mean text token. It shows that a new model trains and samples through the shared code (VideoDiffusionModule,
sample.py) with no edit to it: what it can do is declared in `abilities`, its generation is its own `generate`."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from modules.diffusion.guidance import Guidance
from modules.diffusion.noise import standard_normal
from modules.diffusion.samplers.base import Sampler
from modules.generation import GeneratedLatents, GenerationAbilities, LatentRequest
from modules.video_denoiser import TrainingExample, VideoDenoiser

TOY_NET_TARGET = "tests.helpers.toy_denoiser.ToyDenoiser"


class ToyDenoiser(VideoDenoiser):
    """eps(x_t `[B, C, T, h, w]`, t `[B]`, {"text": `[B, L, D]`}) = W x_t + (t / 1000) v + U mean_l(text).

    Args:
        latent_channels: C, the first stage's latent channels.
        context_dim: D, the text encoder's token width.
    """

    abilities = GenerationAbilities(model_name="Toy", instead="use model=artv")

    def __init__(self, latent_channels: int, context_dim: int) -> None:
        super().__init__()
        self.mix = nn.Conv3d(latent_channels, latent_channels, kernel_size=1)
        self.time = nn.Parameter(torch.randn(latent_channels) * 0.1)
        self.text = nn.Linear(context_dim, latent_channels)

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        bias = self.text(cond["text"].mean(dim=1)) + (t.to(x_t.dtype) / 1000.0)[:, None] * self.time
        return self.mix(x_t) + rearrange(bias, "b c -> b c 1 1 1")

    def training_example(self, latents: Tensor, frame_indices: Tensor | None = None) -> TrainingExample:
        """The whole clip `[B, C, T, h, w]` is the target; text is the only condition."""
        return TrainingExample(x0=latents, cond={})

    @torch.no_grad()
    def generate(self, sampler: Sampler, guidance: Guidance, request: LatentRequest) -> GeneratedLatents:
        """Whole clips from per-video noise `[B, C, T, h, w]`, denoised jointly."""
        parameter = self.time
        (text,) = request.texts
        shape = (request.batch_size, self.mix.in_channels, request.num_frames, *request.latent_size)
        noise = request.initial_noise
        if noise is None:
            noise = standard_normal(shape, request.generators, device=parameter.device, dtype=parameter.dtype)
        latents = sampler.sample(
            self,
            noise,
            cond={"text": text},
            null_cond={"text": request.null_text},
            guidance=guidance,
            generator=request.generators,
        )
        return GeneratedLatents(latents)
