"""Frozen open_clip text encoders (SD 1.x and SD 2.x) and transformers-CLIP key conversion."""

from modules.text_encoders.hf_clip_conversion import TextKeyConversionError, hf_to_open_clip, open_clip_to_hf
from modules.text_encoders.open_clip_embedder import FrozenCLIPTextEmbedder, FrozenOpenCLIPEmbedder
from modules.text_encoders.open_clip_text_tower import OpenCLIPTextTower, resolve_open_clip_config
from modules.text_encoders.text_weight_layouts import detect_text_layout, to_open_clip_text_state_dict

__all__ = [
    "FrozenCLIPTextEmbedder",
    "FrozenOpenCLIPEmbedder",
    "OpenCLIPTextTower",
    "TextKeyConversionError",
    "detect_text_layout",
    "hf_to_open_clip",
    "open_clip_to_hf",
    "resolve_open_clip_config",
    "to_open_clip_text_state_dict",
]
