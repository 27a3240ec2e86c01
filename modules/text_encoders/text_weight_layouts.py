"""Recognise the layout of a text-encoder weight file and bring it to open_clip text-tower names.

Accepted layouts (any of them may still carry the SD prefix ``cond_stage_model.model.`` or
``cond_stage_model.transformer.``, or be a whole SD checkpoint):

- ``open_clip``: a full open_clip ``CLIP`` state dict (``visual.*`` tensors are dropped, as SD 2.x's
  ``FrozenOpenCLIPEmbedder`` deletes the visual tower) or the text tower alone.
- ``hf_clip``: transformers ``CLIPTextModel`` / ``CLIPModel`` names, converted by
  :func:`modules.text_encoders.hf_clip_conversion.hf_to_open_clip`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from modules.checkpoints.sd_checkpoint import TEXT_ENCODER_PREFIX, split_sd_checkpoint
from modules.text_encoders.hf_clip_conversion import (
    HF_TEXT_MODEL_LEVEL,
    TextKeyConversionError,
    hf_to_open_clip,
)

log = logging.getLogger(__name__)

OPEN_CLIP_VISUAL_PREFIX = "visual."
_HF_MARKERS = (HF_TEXT_MODEL_LEVEL, "embeddings.", "encoder.layers.")
_OPEN_CLIP_MARKER = "token_embedding.weight"


def detect_text_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"hf_clip"`` or ``"open_clip"`` for a prefix-free text-encoder state dict.

    Raises:
        ValueError: neither layout's token embedding is found.
    """
    if any(key.startswith(_HF_MARKERS) for key in state_dict):
        return "hf_clip"
    if _OPEN_CLIP_MARKER in state_dict:
        return "open_clip"
    raise ValueError(
        "Unrecognised text-encoder layout: expected open_clip names ('token_embedding.weight', "
        "'transformer.resblocks.*') or transformers CLIPTextModel names ('text_model.embeddings.*'); "
        f"first keys: {list(state_dict)[:5]}"
    )


def to_open_clip_text_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "<in-memory state dict>"
) -> tuple[dict[str, torch.Tensor], str]:
    """Return ``(open_clip text-tower state dict, detected layout)`` for any accepted layout.

    Args:
        state_dict: text-encoder tensors in one of the layouts above, or a whole SD checkpoint.
        source: the file name for messages.

    Raises:
        ValueError: the layout is not recognised (the message names ``source``).
    """
    if any(key.startswith(TEXT_ENCODER_PREFIX) for key in state_dict):
        components = split_sd_checkpoint(state_dict)
        if components.text_encoder_format == "unknown":
            raise ValueError(
                f"{source}: 'cond_stage_model.' tensors are neither 'cond_stage_model.model.*' (open_clip, "
                "SD 2.x) nor 'cond_stage_model.transformer.*' (transformers CLIP, SD 1.x)"
            )
        state_dict = components.text_encoder
    try:
        layout = detect_text_layout(state_dict)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
    if layout == "hf_clip":
        try:
            return hf_to_open_clip(state_dict), layout
        except TextKeyConversionError as error:
            raise TextKeyConversionError(f"{source}: {error}") from error
    visual = [key for key in state_dict if key.startswith(OPEN_CLIP_VISUAL_PREFIX)]
    if visual:
        log.info("%s: dropping %d visual-tower tensors (only the text tower is used)", source, len(visual))
    return {
        key: value for key, value in state_dict.items() if not key.startswith(OPEN_CLIP_VISUAL_PREFIX)
    }, layout
