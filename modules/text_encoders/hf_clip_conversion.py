"""Key conversion between transformers' ``CLIPTextModel`` and open_clip's text tower.

SD 1.x checkpoints store OpenAI's CLIP ViT-L/14 text encoder as a transformers ``CLIPTextModel``
under ``cond_stage_model.transformer.text_model.*``; our text encoders are open_clip modules.
The two are the same network (pre-LN transformer, causal mask, QuickGELU, final LayerNorm); only
names and the attention projection layout differ:

=============================================  ====================================================
transformers (``text_model.`` level optional)   open_clip
=============================================  ====================================================
``embeddings.token_embedding.weight``           ``token_embedding.weight``
``embeddings.position_embedding.weight``        ``positional_embedding``
``embeddings.position_ids`` (int64 buffer)      dropped (positions are always ``0..76``)
``encoder.layers.i.self_attn.{q,k,v}_proj.*``   ``transformer.resblocks.i.attn.in_proj_{weight,bias}``
                                                (q, k, v concatenated along dim 0, in that order)
``encoder.layers.i.self_attn.out_proj.*``       ``transformer.resblocks.i.attn.out_proj.*``
``encoder.layers.i.layer_norm{1,2}.*``          ``transformer.resblocks.i.ln_{1,2}.*``
``encoder.layers.i.mlp.fc{1,2}.*``              ``transformer.resblocks.i.mlp.c_{fc,proj}.*``
``final_layer_norm.*``                          ``ln_final.*``
``text_projection.weight`` (``CLIPModel``)      ``text_projection`` (transposed)
``logit_scale`` (``CLIPModel``)                 ``logit_scale``
=============================================  ====================================================

transformers >= 5 saves ``CLIPTextModel`` without the ``text_model.`` level; both spellings are read.
A full ``CLIPModel`` file's ``vision_model.*`` / ``visual_projection.*`` tensors are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

HF_TEXT_MODEL_LEVEL = "text_model."
HF_POSITION_IDS = "embeddings.position_ids"
HF_VISION_PREFIXES = ("vision_model.", "visual_projection.")
HF_TEXT_PROJECTION = "text_projection.weight"

# Whole-model tensors: transformers name -> open_clip name.
_GLOBAL_RENAMES = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
# Per-layer tensors (after "encoder.layers.i." / "transformer.resblocks.i."), except q/k/v.
_LAYER_RENAMES = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
QKV_ORDER = ("q_proj", "k_proj", "v_proj")

_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"^self_attn\.([qkv]_proj)\.(weight|bias)$")
_OPEN_CLIP_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPEN_CLIP_IN_PROJ = re.compile(r"^attn\.in_proj_(weight|bias)$")


class TextKeyConversionError(ValueError):
    """A text-encoder state dict has tensors the conversion does not know or lacks q/k/v parts."""


def _drop_text_model_level(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        (key[len(HF_TEXT_MODEL_LEVEL) :] if key.startswith(HF_TEXT_MODEL_LEVEL) else key): value
        for key, value in state_dict.items()
    }


def hf_to_open_clip(hf_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a transformers ``CLIPTextModel`` (or ``CLIPModel``) state dict to open_clip text names.

    Args:
        hf_state_dict: keys as transformers saves them, with or without the ``text_model.`` level
            (SD prefixes such as ``cond_stage_model.transformer.`` already stripped).

    Returns:
        open_clip text-tower state dict. ``text_projection`` and ``logit_scale`` are present only
        when the input is a full ``CLIPModel``; ``CLIPTextModel`` (SD 1.x) has neither.

    Raises:
        TextKeyConversionError: unknown tensors, or a layer whose q/k/v projections are incomplete.
    """
    converted: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in _drop_text_model_level(hf_state_dict).items():
        if key == HF_POSITION_IDS or key.startswith(HF_VISION_PREFIXES):
            continue
        if key == HF_TEXT_PROJECTION:
            # nn.Linear computes x @ W.T; open_clip computes x @ P, so P = W.T.
            converted["text_projection"] = tensor.t().contiguous()
            continue
        if key in _GLOBAL_RENAMES:
            converted[_GLOBAL_RENAMES[key]] = tensor
            continue
        layer_match = _HF_LAYER.match(key)
        if layer_match is None:
            unknown.append(key)
            continue
        layer, suffix = int(layer_match.group(1)), layer_match.group(2)
        qkv_match = _HF_QKV.match(suffix)
        if qkv_match is not None:
            projection, kind = qkv_match.groups()
            qkv_parts.setdefault((layer, kind), {})[projection] = tensor
        elif suffix in _LAYER_RENAMES:
            converted[f"transformer.resblocks.{layer}.{_LAYER_RENAMES[suffix]}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise TextKeyConversionError(
            f"{len(unknown)} tensors are not part of a transformers CLIPTextModel (first: {unknown[:10]})"
        )
    for (layer, kind), parts in sorted(qkv_parts.items()):
        absent = [name for name in QKV_ORDER if name not in parts]
        if absent:
            raise TextKeyConversionError(
                f"encoder.layers.{layer}.self_attn lacks {absent} {kind}; cannot build in_proj_{kind}"
            )
        converted[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts[name] for name in QKV_ORDER], dim=0
        )
    return converted


def open_clip_to_hf(
    open_clip_state_dict: Mapping[str, torch.Tensor],
    *,
    text_model_level: bool = True,
    position_ids: bool = True,
) -> dict[str, torch.Tensor]:
    """Convert an open_clip text-tower state dict to transformers ``CLIPTextModel`` names.

    ``text_projection`` and ``logit_scale`` are dropped (``CLIPTextModel`` has neither), as are
    ``visual.*`` tensors of a full open_clip ``CLIP``.

    Args:
        open_clip_state_dict: open_clip names (``transformer.resblocks.0.attn.in_proj_weight``).
        text_model_level: prefix keys with ``text_model.`` (transformers < 5, SD 1.x files).
        position_ids: add the int64 ``embeddings.position_ids`` buffer ``[1, context_length]`` that
            the original SD 1.x checkpoints contain.

    Returns:
        transformers state dict; q/k/v are independent copies (safe for safetensors).

    Raises:
        TextKeyConversionError: tensors that are not part of the plain CLIP text tower.
    """
    to_hf_global = {open_clip: hf for hf, open_clip in _GLOBAL_RENAMES.items() if hf != "logit_scale"}
    to_hf_layer = {open_clip: hf for hf, open_clip in _LAYER_RENAMES.items()}
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in open_clip_state_dict.items():
        if key in ("text_projection", "logit_scale") or key.startswith("visual."):
            continue
        if key in to_hf_global:
            converted[to_hf_global[key]] = tensor
            continue
        layer_match = _OPEN_CLIP_LAYER.match(key)
        if layer_match is None:
            unknown.append(key)
            continue
        layer, suffix = int(layer_match.group(1)), layer_match.group(2)
        in_proj_match = _OPEN_CLIP_IN_PROJ.match(suffix)
        if in_proj_match is not None:
            kind = in_proj_match.group(1)
            for name, part in zip(QKV_ORDER, tensor.chunk(3, dim=0), strict=True):
                converted[f"encoder.layers.{layer}.self_attn.{name}.{kind}"] = part.clone()
        elif suffix in to_hf_layer:
            converted[f"encoder.layers.{layer}.{to_hf_layer[suffix]}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise TextKeyConversionError(
            f"{len(unknown)} tensors are not part of an open_clip text tower (first: {unknown[:10]})"
        )
    if position_ids:
        if "positional_embedding" not in open_clip_state_dict:
            raise TextKeyConversionError("position_ids=True needs 'positional_embedding' (its length)")
        positions = open_clip_state_dict["positional_embedding"]
        converted[HF_POSITION_IDS] = torch.arange(
            positions.shape[0], dtype=torch.long, device=positions.device
        ).unsqueeze(0)
    if text_model_level:
        converted = {HF_TEXT_MODEL_LEVEL + key: value for key, value in converted.items()}
    return converted
