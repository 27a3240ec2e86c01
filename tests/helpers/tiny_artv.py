"""A tiny ART-V denoiser (4-channel 8x8 latents, 2 UNet levels) and random conditions for it, shared by the ART-V
model, generation and condition-cache tests."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from modules.artv.adapter import T2IAdapter
from modules.artv.artv_denoiser import ARTVDenoiser
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.unet.unet_2d import UNetModel

LATENT_CHANNELS = 4
LATENT_SIZE = 8
CONTEXT_DIM = 8
TEXT_TOKENS = 3
UNET_ARGUMENTS: dict[str, Any] = dict(
    model_channels=32,
    attention_resolutions=[1, 2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_head_channels=16,
    context_dim=CONTEXT_DIM,
    use_linear_in_transformer=True,
)


def tiny_artv(seed: int = 0, randomize_zero_init: bool = True, **overrides: Any) -> ARTVDenoiser:
    """A tiny ART-V (4-channel 8x8 latents, 2 levels). With `randomize_zero_init`, every parameter that starts at
    zero (output convs, anchor-block output projections) is made random so every path affects the output."""
    torch.manual_seed(seed)
    unet_arguments = {**UNET_ARGUMENTS, **overrides.pop("unet_arguments", {})}
    arguments: dict[str, Any] = dict(
        dynamic_unet=functools.partial(UNetModel, LATENT_CHANNELS, LATENT_CHANNELS, **unet_arguments),
        mask_unet=functools.partial(UNetModel, LATENT_CHANNELS, 1, **unet_arguments),
        dynamic_adapter=functools.partial(T2IAdapter, nums_rb=2, ksize=1, sk=True, use_conv=False),
        mask_adapter=functools.partial(T2IAdapter, nums_rb=2, ksize=1, sk=True, use_conv=False),
        schedule=NoiseSchedule(),
        latent_channels=LATENT_CHANNELS,
    )
    arguments.update(overrides)
    net = ARTVDenoiser(**arguments)
    if randomize_zero_init:
        with torch.no_grad():
            for parameter in net.parameters():
                if not parameter.any():
                    parameter.normal_(std=0.1)
    return net


def random_conditions(batch: int = 2, seed: int = 1) -> dict[str, Tensor]:
    """Random text, reference (three latents stacked on channels) and anchor conditions of a batch."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
    return {
        "text": torch.randn(batch, TEXT_TOKENS, CONTEXT_DIM, generator=generator),
        "reference": torch.randn(batch, 3 * LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=generator),
        "anchor": torch.randn(shape, generator=generator),
    }
