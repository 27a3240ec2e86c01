"""Diffusion maths: the noise schedule, guidance (CFG, ART-V eq. (1)) and samplers (DDIM, DPM++ 2S ancestral,
DPM++ 2M, Euler ancestral)."""

from modules.diffusion.guidance import (
    ClassifierFreeGuidance,
    Conditions,
    EpsModel,
    Guidance,
    MultiConditionGuidance,
    NoGuidance,
)
from modules.diffusion.noise_schedule import NoiseSchedule

__all__ = [
    "ClassifierFreeGuidance",
    "Conditions",
    "EpsModel",
    "Guidance",
    "MultiConditionGuidance",
    "NoGuidance",
    "NoiseSchedule",
]
