"""What every sampler shares: the call signature, guided eps evaluation, seeded noise, progress, callbacks.

One signature for all samplers (k-diffusion style, docs/ARCHITECTURE.md "Samplers"):

    sampler.sample(eps_model, noise, *, cond, null_cond=None, guidance=None, generator=None, callback=None) -> x0

`noise` is standard normal of the output shape `[B, ...]` (e.g. `[B, C, T, H, W]`); each sampler scales it
as its algorithm needs. `generator` is one generator, or one per video (`modules/diffusion/noise.py`): fresh noise
(ancestral samplers, DDIM with eta > 0) then comes from each video's own generator. Per-step scalar coefficients are computed in float64 from the schedule's float64
copy (`NoiseSchedule.alphas_cumprod_f64`, `sigmas_f64`) and applied to x in x's dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from modules.diffusion.guidance import Conditions, EpsModel, Guidance, NoGuidance
from modules.diffusion.noise import Generators, standard_normal
from modules.diffusion.noise_schedule import NoiseSchedule

StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""callback(step, total, x, x0_pred), called after every step; step counts from 0."""


class Sampler(ABC):
    """Base class. Args: schedule (the model's NoiseSchedule), num_steps, progress (tqdm bar on/off),
    x0_range: optional `[low, high]` to which every predicted x0 is clipped (pixel-space models, as in DDPM's
    clipped x0 and diffusers' `clip_sample`); None, the default and the original ldm/sgm behaviour, never clips."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int,
        progress: bool = True,
        x0_range: tuple[float, float] | None = None,
    ):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"{type(self).__name__}: schedule must be a NoiseSchedule, got {type(schedule).__name__} "
                "(sampler configs are `_partial_`; instantiate them with schedule=<the model's schedule>)"
            )
        if num_steps < 1:
            raise ValueError(
                f"{type(self).__name__}: num_steps must be >= 1, got {num_steps} <sampler.num_steps>"
            )
        if x0_range is not None and (len(x0_range) != 2 or not x0_range[0] < x0_range[1]):
            raise ValueError(
                f"x0_range must be [low, high] with low < high, got {x0_range} <sampler.x0_range>"
            )
        self.schedule = schedule
        self.num_steps = num_steps
        self.progress = progress
        self.x0_range = None if x0_range is None else (float(x0_range[0]), float(x0_range[1]))

    def clip_x0(self, x0: Tensor) -> Tensor:
        """Clamp a predicted x0 to `x0_range` (identity when it is None)."""
        return x0 if self.x0_range is None else x0.clamp(*self.x0_range)

    @abstractmethod
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
    def _randn_like(x: Tensor, generator: Generators) -> Tensor:
        """Standard normal of x's shape, device and dtype: row b from `generator[b]` when given one generator per
        video (so a video's fresh noise does not depend on its batch), else one draw (global RNG when None)."""
        return standard_normal(x.shape, generator, device=x.device, dtype=x.dtype)

    def _progress(self, steps: Iterable[int], total: int) -> Iterable[int]:
        return tqdm(steps, total=total, desc=type(self).__name__, disable=not self.progress, leave=False)
