"""POS DDIM inversion: inverting then sampling with the same conditions reconstructs the latent, and the inverted
state is expressed in each sampler's convention (DDIM's x_T, DPM++'s sqrt(1 + sigma_0^2) scaling).

The eps model is the exact denoiser of Gaussian data x0 ~ N(mu(text), s^2 I) (mu from the text condition), whose
probability-flow ODE is known in closed form: along it, (x_t - sqrt(a_t) mu) / sqrt(a_t s^2 + 1 - a_t) is constant.
A random UNet is no stand-in: its eps is not smooth enough in x_t for any ODE inversion to be accurate.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from modules.artv.frame_inversion import PerFrameInversion
from modules.diffusion.guidance import ClassifierFreeGuidance
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers import DDIMSampler, DPMPP2SAncestralSampler
from modules.pos.hybrid_semantics import HybridSchedule, HybridTextConditioning, pair_text
from modules.pos.noise_inversion import (
    InversionSettings,
    WholeClipInversion,
    ddim_transfer,
    invert_to_sampler_start,
)

DATA_STD = 0.5
SHAPE = (2, 4, 3, 6, 6)  # [B, C, T, h, w]


class GaussianDataDenoiser(nn.Module):
    """Exact eps of x0 ~ N(mu, s^2 I) with mu = the text embedding's mean per sample:
    eps(x_t, t) = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / (a_t s^2 + 1 - a_t)."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.schedule = schedule
        # a parameter, so the strategies find the device and dtype
        self.anchor = nn.Parameter(torch.zeros(()))

    @staticmethod
    def data_mean(text: Tensor, like: Tensor) -> Tensor:
        return text.mean(dim=(1, 2)).reshape(-1, *([1] * (like.ndim - 1)))

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        alphas = self.schedule.alphas_cumprod_f64[t.cpu()].to(x_t).reshape(-1, *([1] * (x_t.ndim - 1)))
        mu = self.data_mean(cond["text"], x_t)
        return (1 - alphas).sqrt() * (x_t - alphas.sqrt() * mu) / (alphas * DATA_STD**2 + 1 - alphas)

    def exact_state(self, x0: Tensor, text: Tensor, timestep: int) -> Tensor:
        """The probability-flow ODE state at `timestep` of the clean x0 (taken at a_0, as DDIM does)."""
        alphas = self.schedule.alphas_cumprod_f64
        mu = self.data_mean(text, x0)

        def spread(a: float) -> float:
            return math.sqrt(a * DATA_STD**2 + 1 - a)

        a_0, a_t = float(alphas[0]), float(alphas[timestep])
        z = (x0 - math.sqrt(a_0) * mu) / spread(a_0)
        return math.sqrt(a_t) * mu + spread(a_t) * z


def texts(batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Text embeddings whose means are 0.8 and -0.4 (prompt), 0.3 (rewrite), and a null text of mean 0."""
    prompt = torch.stack([torch.full((3, 4), 0.8), torch.full((3, 4), -0.4)])[:batch]
    return prompt, torch.full_like(prompt, 0.3), torch.zeros(1, 3, 4)


def clean_latents(denoiser: GaussianDataDenoiser, text: Tensor) -> Tensor:
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(SHAPE, generator=generator) * DATA_STD
    return x0 + denoiser.data_mean(text, x0)


def relative_error(estimate: Tensor, target: Tensor) -> float:
    return float((estimate - target).norm() / target.norm())


@pytest.mark.parametrize(
    "num_steps, fixed_point_iterations, tolerance",
    # measured: 0.034, 0.012 and 0.0003 relative L2 error (DDIM's own approximation eps(x_t) ~ eps(x_prev) is what
    # the fixed-point iterations remove)
    [(50, 0, 0.05), (10, 2, 0.02), (10, 5, 1e-3)],
)
def test_ddim_inversion_then_sampling_reconstructs_the_latent(num_steps, fixed_point_iterations, tolerance):
    schedule = NoiseSchedule()
    denoiser = GaussianDataDenoiser(schedule)
    text, _, null_text = texts()
    x0 = clean_latents(denoiser, text)
    sampler = DDIMSampler(schedule, num_steps=num_steps, progress=False)
    settings = InversionSettings(fixed_point_iterations=fixed_point_iterations)
    x_start = WholeClipInversion().invert(
        denoiser, x0, [text], null_text, sampler=sampler, guidance=None, settings=settings
    )
    # the inverted state is noise-like: the ODE state at the top timestep, within DDIM's discretisation error
    exact = denoiser.exact_state(x0, text, int(sampler.timesteps()[0]))
    assert relative_error(x_start, exact) < 0.3
    reconstructed = sampler.sample(denoiser, x_start, cond={"text": text})
    assert relative_error(reconstructed, x0) < tolerance


def test_inversion_and_sampling_under_hybrid_text_and_guidance_reconstruct_too():
    schedule = NoiseSchedule()
    denoiser = GaussianDataDenoiser(schedule)
    text, rewritten, null_text = texts()
    x0 = clean_latents(denoiser, text)
    sampler = DDIMSampler(schedule, num_steps=25, progress=False)
    hybrid = HybridTextConditioning(sampler.timesteps(), HybridSchedule(0.4, 0.4))
    pair, null_pair = pair_text(text, rewritten), pair_text(null_text, null_text)
    guidance = ClassifierFreeGuidance(3.0)

    def invert_and_sample(use_guidance: bool) -> Tensor:
        settings = InversionSettings(fixed_point_iterations=3, use_guidance=use_guidance)
        with hybrid.attached(denoiser):
            x_start = WholeClipInversion().invert(
                denoiser, x0, [pair], null_pair, sampler=sampler, guidance=guidance, settings=settings
            )
            return sampler.sample(
                denoiser, x_start, cond={"text": pair}, null_cond={"text": null_pair}, guidance=guidance
            )

    assert relative_error(invert_and_sample(use_guidance=True), x0) < 0.01
    # inverted without guidance (the default), sampled with CFG: a different ODE, not a reconstruction
    assert relative_error(invert_and_sample(use_guidance=False), x0) > 0.1


def test_inverted_noise_is_expressed_in_dpmpp_convention():
    """DDIM inversion with 10 steps ends at t = 901; DPM++ (10 steps) starts at t = 999 and scales its noise by
    sqrt(1 + sigma_0^2) = 1 / sqrt(a_999): it expects the VP state at 999, which the bridging move provides."""
    schedule = NoiseSchedule()
    denoiser = GaussianDataDenoiser(schedule)
    text, _, _ = texts()
    x0 = clean_latents(denoiser, text)
    sampler = DPMPP2SAncestralSampler(schedule, num_steps=10, eta=0.0, progress=False)
    ddim = DDIMSampler(schedule, num_steps=10, progress=False)
    assert int(sampler.timesteps()[0]) == 999 and int(ddim.timesteps()[0]) == 901
    settings = InversionSettings(fixed_point_iterations=3)
    bridged = invert_to_sampler_start(
        denoiser, x0, sampler=sampler, cond={"text": text}, null_cond=None, guidance=None, settings=settings
    )
    unbridged = ddim.invert(denoiser, x0, cond={"text": text}, fixed_point_iterations=3)

    def reconstruction_error(x_start: Tensor) -> float:
        return relative_error(sampler.sample(denoiser, x_start, cond={"text": text}), x0)

    # measured 0.0065 (bridged) vs 0.019 (the state at 901 taken for 999); DPM++ 2S is not DDIM's inverse, so
    # the reconstruction is close but not exact
    assert reconstruction_error(bridged) < 0.01
    assert reconstruction_error(unbridged) > 2 * reconstruction_error(bridged)
    # handing DPM++ its own sigma-scaled state would scale it twice
    sigma_scaled = bridged / math.sqrt(float(schedule.alphas_cumprod_f64[999]))
    assert reconstruction_error(sigma_scaled) > 1.0


def test_ddim_transfer_moves_along_the_ode_both_ways():
    schedule = NoiseSchedule()
    denoiser = GaussianDataDenoiser(schedule)
    text, _, _ = texts()
    x_500 = denoiser.exact_state(clean_latents(denoiser, text), text, 500)
    for target in (480, 520):
        moved = ddim_transfer(
            denoiser, x_500, schedule=schedule, t_from=500, t_to=target, cond={"text": text}
        )
        assert relative_error(moved, denoiser.exact_state(clean_latents(denoiser, text), text, target)) < 1e-3


class FrameRecorder(nn.Module):
    """A per-frame eps model (x_t [B, C, h, w]) that records its conditions; eps = 0.1 x_t."""

    latent_channels = 4
    reference_noise_level_inference = 0.02

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.seen: list[dict[str, Tensor]] = []

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        self.seen.append({key: value.clone() for key, value in cond.items()})
        return 0.1 * x_t

    def null_condition(self, cond: dict[str, Tensor], null_text: Tensor) -> dict[str, Tensor]:
        return {**{key: torch.zeros_like(value[:1]) for key, value in cond.items()}, "text": null_text}


@pytest.mark.parametrize("all_frames", [False, True])
def test_per_frame_inversion_uses_the_conditions_of_each_generated_frame(all_frames):
    net = FrameRecorder()
    latents = torch.randn(1, 4, 3, 6, 6)
    text, _, null_text = texts(batch=1)
    sampler = DPMPP2SAncestralSampler(NoiseSchedule(), num_steps=4, progress=False)
    inverted = PerFrameInversion(all_frames).invert(
        net, latents, [text], null_text, sampler=sampler, guidance=None, settings=InversionSettings()
    )
    assert inverted.shape == (1, 4, 3 if all_frames else 1, 6, 6)
    calls_per_frame = len(net.seen) // inverted.shape[2]
    first = net.seen[0]
    assert not first["reference"].any() and not first["anchor"].any()  # text-to-video's first frame
    if all_frames:
        second = net.seen[calls_per_frame]
        torch.testing.assert_close(second["anchor"], latents[:, :, 0])
        torch.testing.assert_close(second["reference"][:, 8:], latents[:, :, 0])  # clean previous frame
        third = net.seen[2 * calls_per_frame]
        torch.testing.assert_close(third["reference"][:, 8:], latents[:, :, 1])
        noisy_pair = third["reference"][:, :8]
        assert 0 < float((noisy_pair - torch.cat([latents[:, :, 0], latents[:, :, 1]], 1)).std()) < 0.05
    fresh = PerFrameInversion(all_frames).fresh_noise(net, inverted, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    draws = [torch.randn(1, 4, 6, 6, generator=generator) for _ in range(inverted.shape[2])]
    assert torch.equal(fresh, torch.stack(draws, dim=2))
