"""Euler ancestral on the discrete DDPM sigma grid, as sgm runs it (k-diffusion `sample_euler_ancestral`).

sgm `EulerAncestralSampler` with `LegacyDDPMDiscretization` and a `DiscreteDenoiser` with `EpsScaling`. Each step
is an Euler step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma down to sigma_down, then fresh
noise sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2. The grid, the initial scaling, the denoiser and
the ancestral split are shared with the other sgm samplers (`discrete_sigma.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from modules.diffusion.guidance import Conditions, EpsModel, Guidance
from modules.diffusion.noise import Generators
from modules.diffusion.samplers.base import StepCallback
from modules.diffusion.samplers.discrete_sigma import AncestralSigmaSampler, euler_step


class EulerAncestralSampler(AncestralSigmaSampler):
    """Euler ancestral: a first-order step down to sigma_down, then fresh noise up to sigma_next.

    Args:
        schedule: the model's NoiseSchedule (runtime argument; the config is `_partial_`).
        num_steps: n, number of steps and network evaluations (sgm SamplingParams default: 50).
        eta: ancestral noise amount (sgm default 1; 0 gives the deterministic Euler solver).
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
        """Euler ancestral from standard normal noise `[B, ...]`; returns x0 `[B, ...]`."""
        sigmas = self._sigmas.tolist()
        x = self._initial_state(noise)
        total = len(sigmas) - 1
        for i in self._progress(range(total), total):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            sigma_down, sigma_up = self._ancestral_split(sigma, sigma_next)
            denoised = self._denoise(eps_model, guidance, x, sigma, cond, null_cond)
            x = euler_step(x, denoised, sigma, sigma_down)
            x = self._add_noise(x, sigma_next, sigma_up, generator)
            if callback is not None:
                callback(i, total, x, denoised)
        return x
