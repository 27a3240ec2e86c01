"""What every sampler shares: the call signature, guided eps evaluation, seeded noise, progress, callbacks.

One signature for all samplers (k-diffusion style, docs/ARCHITECTURE.md "Samplers"):

    sampler.sample(eps_model, noise, *, cond, null_cond=None, guidance=None, generator=None, callback=None) -> x0

`noise` is standard normal of the output shape `[B, ...]` (e.g. `[B, C, T, H, W]`); each sampler scales it
as its algorithm needs. Per-step scalar coefficients are computed in float64 from the schedule's float64
copy (`NoiseSchedule.alphas_cumprod_f64`, `sigmas_f64`) and applied to x in x's dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from modules.diffusion.guidance import Conditions, EpsModel, Guidance, NoGuidance
from modules.diffusion.noise_schedule import NoiseSchedule

StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""callback(step, total, x, x0_pred), called after every step; step counts from 0."""


class Sampler(ABC):
    """Base class. Args: schedule (the model's NoiseSchedule), num_steps, progress (tqdm bar on/off)."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int, progress: bool = True):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"{type(self).__name__}: schedule must be a NoiseSchedule, got {type(schedule).__name__} "
                "(sampler configs are `_partial_`; instantiate them with schedule=<the model's schedule>)"
            )
        if num_steps < 1:
            raise ValueError(
                f"{type(self).__name__}: num_steps must be >= 1, got {num_steps} <sampler.num_steps>"
            )
        self.schedule = schedule
        self.num_steps = num_steps
        self.progress = progress

    @abstractmethod
    def sample(
        self,
        eps_model: EpsModel,
        noise: Tensor,
        *,
        cond: Conditions,
        null_cond: Conditions | None = None,
        guidance: Guidance | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Draw x0 `[B, ...]` starting from standard normal `noise` `[B, ...]`."""

    def _guided_eps(
        self,
        eps_model: EpsModel,
        guidance: Guidance | None,
        x: Tensor,
        timestep: int,
        cond: Conditions,
        null_cond: Conditions | None,
    ) -> Tensor:
        """Guided eps `[B, ...]` at DDPM step `timestep` for every sample of x `[B, ...]`."""
        t = torch.full((x.shape[0],), timestep, dtype=torch.int64, device=x.device)
        return (guidance or NoGuidance())(eps_model, x, t, cond, null_cond)

    @staticmethod
    def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard normal of x's shape, device and dtype, drawn from generator (global RNG when None)."""
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on '{generator.device}' but the noise is on '{x.device}'; "
                f"create it with torch.Generator(device='{x.device.type}')"
            )
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def _progress(self, steps: Iterable[int], total: int) -> Iterable[int]:
        return tqdm(steps, total=total, desc=type(self).__name__, disable=not self.progress, leave=False)
