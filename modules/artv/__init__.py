"""ART-V: auto-regressive text-to-video with masked diffusion (ART-V supplementary; which part of the paper
lives where: docs/ARCHITECTURE.md, "Paper to code")."""

from modules.artv.adapter import T2IAdapter
from modules.artv.anchor_attention import AnchorBlockFactory, AnchorSpatialTransformer, anchor_tokens
from modules.artv.artv_denoiser import ARTVDenoiser
from modules.artv.autoregressive import generate_video
from modules.artv.masked_diffusion import masked_eps, masked_x0
from modules.artv.prepared_conditions import ConditionCaching, PreparedConditions

__all__ = [
    "ARTVDenoiser",
    "AnchorBlockFactory",
    "AnchorSpatialTransformer",
    "ConditionCaching",
    "PreparedConditions",
    "T2IAdapter",
    "anchor_tokens",
    "generate_video",
    "masked_eps",
    "masked_x0",
]
