"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) on the discrete DDPM sigma grid, as sgm runs it.

sgm `DPMPP2MSampler` (its default sampler, `sgm/inference/api.py` SamplingParams) with `LegacyDDPMDiscretization`
and a `DiscreteDenoiser` with `EpsScaling`; k-diffusion `sample_dpmpp_2m` is the same update. Deterministic: one
network evaluation per step, second order by reusing the previous step's denoised estimate. The grid, the initial
scaling and the denoiser are shared with the other sgm samplers (`discrete_sigma.py`).

In t = -log(sigma), with h = t_next - t and h_last = t - t_prev, r = h_last / h:
    D_d = (1 + 1 / (2 r)) D(x, sigma) - 1 / (2 r) D_prev
    x_next = (sigma_next / sigma) x - expm1(-h) D_d
The first step (no D_prev) uses D_d = D (DPM-Solver++(1), i.e. DDIM in the sigma parametrisation); the last step
(sigma_next = 0, h = inf) is x_next = D(x, sigma).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modules.diffusion.guidance import Conditions, EpsModel, Guidance
from modules.diffusion.noise import Generators
from modules.diffusion.samplers.base import StepCallback
from modules.diffusion.samplers.discrete_sigma import DiscreteSigmaSampler


class DPMPP2MSampler(DiscreteSigmaSampler):
    """DPM++ 2M: deterministic multistep second-order solver of the probability-flow ODE in log-sigma.

    Args:
        schedule: the model's NoiseSchedule (runtime argument; the config is `_partial_`).
        num_steps: n, number of steps and network evaluations (sgm SamplingParams default: 50).
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
        """DPM++ 2M from standard normal noise `[B, ...]`; returns x0 `[B, ...]` (deterministic: generator unused)."""
        sigmas = self._sigmas.tolist()
        x = self._initial_state(noise)
        total = len(sigmas) - 1
        previous_denoised: Tensor | None = None
        for i in self._progress(range(total), total):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = self._denoise(eps_model, guidance, x, sigma, cond, null_cond)
            if sigma_next == 0:
                # h -> inf: sigma_next / sigma -> 0 and expm1(-h) -> -1, so x_next = D(x, sigma)
                x = denoised
            else:
                t, t_next = -math.log(sigma), -math.log(sigma_next)
                h = t_next - t
                if previous_denoised is None:
                    # first step, first order: D_d = D
                    denoised_d = denoised
                else:
                    # r = h_last / h with h_last = t - t_prev; D_d = (1 + 1 / (2 r)) D - 1 / (2 r) D_prev
                    t_prev = -math.log(sigmas[i - 1])
                    r = (t - t_prev) / h
                    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous_denoised
                # x_next = (sigma_next / sigma) x - expm1(-h) D_d
                x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
            previous_denoised = denoised
            if callback is not None:
                callback(i, total, x, denoised)
        return x
