"""Samplers with one shared signature: `sample(eps_model, noise, *, cond, null_cond, guidance, generator, callback)`."""

from modules.diffusion.samplers.base import Sampler, StepCallback
from modules.diffusion.samplers.ddim import DDIMSampler
from modules.diffusion.samplers.dpmpp_2m import DPMPP2MSampler
from modules.diffusion.samplers.dpmpp_2s_ancestral import DPMPP2SAncestralSampler
from modules.diffusion.samplers.euler_ancestral import EulerAncestralSampler

__all__ = [
    "DDIMSampler",
    "DPMPP2MSampler",
    "DPMPP2SAncestralSampler",
    "EulerAncestralSampler",
    "Sampler",
    "StepCallback",
]
