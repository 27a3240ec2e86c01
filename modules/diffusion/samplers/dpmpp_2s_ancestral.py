"""DPM-Solver++(2S) ancestral (Lu et al. 2022) on the discrete DDPM sigma grid, as sgm runs it.

ART-V supplementary, Inference: "DPMPP2SAncestral Sampler", 50 steps (sgm `DPMPP2SAncestralSampler` with
`LegacyDDPMDiscretization` and a `DiscreteDenoiser` with `EpsScaling`). The grid, the initial scaling, the
denoiser and the ancestral split are shared with the other sgm samplers (`discrete_sigma.py`); facts matched in
tests/fixtures/reference/ORIGINAL_BEHAVIOUR.md, "DPM++ 2S ancestral".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modules.diffusion.guidance import Conditions, EpsModel, Guidance
from modules.diffusion.noise import Generators
from modules.diffusion.samplers.base import StepCallback
from modules.diffusion.samplers.discrete_sigma import AncestralSigmaSampler, euler_step


class DPMPP2SAncestralSampler(AncestralSigmaSampler):
    """DPM++ 2S ancestral: a second-order midpoint step down to sigma_down, then fresh noise up to sigma_next.

    Args:
        schedule: the model's NoiseSchedule (runtime argument; the config is `_partial_`).
        num_steps: n, number of steps (ART-V supplementary, Inference: 50).
        eta: ancestral noise amount (sgm default 1; 0 gives the deterministic DPM++ 2S).
        s_noise: scale of the added noise (sgm default 1).
        progress: show a tqdm bar.
        x0_range: clip the denoised estimate to this range (pixel-space models); None = sgm.
    """

    @torch.no_grad()
    def sample(
        self,
        eps_model: EpsModel,
        noise: Tensor,
        *,
        cond: Conditions,
        null_cond: Conditions | None = None,
        guidance: Guidance | None = None,
        generator: Generators = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """DPM++ 2S ancestral from standard normal noise `[B, ...]`; returns x0 `[B, ...]`."""
        sigmas = self._sigmas.tolist()
        x = self._initial_state(noise)
        total = len(sigmas) - 1
        for i in self._progress(range(total), total):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            sigma_down, sigma_up = self._ancestral_split(sigma, sigma_next)
            denoised = self._denoise(eps_model, guidance, x, sigma, cond, null_cond)
            if sigma_down == 0:
                x = euler_step(x, denoised, sigma, sigma_down)
            else:
                # midpoint in t = -log(sigma): h = t_next - t, s = t + h / 2
                t, t_next = -math.log(sigma), -math.log(sigma_down)
                h = t_next - t
                s = t + 0.5 * h
                # x2 = (sigma(s) / sigma) x - expm1(-h / 2) D(x, sigma)
                x2 = (math.exp(-s) / sigma) * x - math.expm1(-0.5 * h) * denoised
                denoised2 = self._denoise(eps_model, guidance, x2, math.exp(-s), cond, null_cond)
                # x = (sigma_down / sigma) x - expm1(-h) D(x2, sigma(s))
                x = (sigma_down / sigma) * x - math.expm1(-h) * denoised2
            x = self._add_noise(x, sigma_next, sigma_up, generator)
            if callback is not None:
                callback(i, total, x, denoised)
        return x
