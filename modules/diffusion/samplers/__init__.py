"""Samplers with one shared signature: `sample(eps_model, noise, *, cond, null_cond, guidance, generator, callback)`."""

from modules.diffusion.samplers.base import Sampler, StepCallback
from modules.diffusion.samplers.ddim import DDIMSampler
from modules.diffusion.samplers.dpmpp_2s_ancestral import DPMPP2SAncestralSampler

__all__ = ["DDIMSampler", "DPMPP2SAncestralSampler", "Sampler", "StepCallback"]
