"""Split an original Stable Diffusion checkpoint into its components and load them strictly.

An ldm/sgm ``LatentDiffusion`` checkpoint (``.ckpt`` or ``.safetensors``) stores every component
under a prefix:

- ``model.diffusion_model.``: UNet (our ``UNetModel`` names, unchanged);
- ``first_stage_model.``: AutoencoderKL;
- ``cond_stage_model.model.``: SD 2.x text encoder, the open_clip ViT-H-14 text tower;
- ``cond_stage_model.transformer.``: SD 1.x text encoder, transformers ``CLIPTextModel`` (ViT-L/14);
- ``model_ema.``: EMA copy of the UNet, written by ldm's ``LitEma``;
- no prefix: DDPM schedule buffers (``betas``, ``alphas_cumprod``, ...), ignored.

``LitEma`` registers one buffer per trainable parameter of ``LatentDiffusion.model`` (the
``DiffusionWrapper`` holding ``diffusion_model``) under the parameter's name with the dots removed
(``model_ema.diffusion_modelinput_blocks00weight``), plus ``model_ema.decay`` and
``model_ema.num_updates``. Removing dots is not invertible in general, so EMA names are mapped back by
flattening the known UNet key list the same way and matching.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from modules.checkpoints.safe_load import CheckpointError, load_state_dict_file
from modules.checkpoints.strict_load import LoadReport, load_strict

if TYPE_CHECKING:
    from modules.text_encoders.open_clip_embedder import FrozenOpenCLIPEmbedder

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
FIRST_STAGE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model."
OPEN_CLIP_TEXT_PREFIX = "cond_stage_model.model."
HF_CLIP_TEXT_PREFIX = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING_KEYS = ("decay", "num_updates")
# The LitEma buffer names start with the attribute path of the UNet inside DiffusionWrapper.
EMA_UNET_ATTRIBUTE = "diffusion_model."
# Training-loss modules an ldm AutoencoderKL checkpoint may carry (LPIPS + discriminator).
FIRST_STAGE_LOSS_PREFIX = "loss."

SD_PREFIXES = (UNET_PREFIX, FIRST_STAGE_PREFIX, TEXT_ENCODER_PREFIX, EMA_PREFIX)


@dataclass
class SDComponents:
    """The components of one SD checkpoint, each with its prefix stripped.

    Attributes:
        unet: ``UNetModel`` state dict (from ``model_ema.`` when ``unet_from_ema``).
        first_stage: ``AutoencoderKL`` state dict.
        text_encoder: text-encoder state dict with ``cond_stage_model.model.`` (open_clip) or
            ``cond_stage_model.transformer.`` (transformers) stripped.
        text_encoder_format: ``"open_clip"`` (SD 2.x), ``"hf_clip"`` (SD 1.x), ``"unknown"`` (other
            ``cond_stage_model.`` layouts) or ``None`` (no text encoder in the file).
        text_encoder_prefix: the prefix stripped from the text-encoder keys.
        unet_from_ema: whether ``unet`` holds the EMA weights.
        ignored_keys: keys outside the components (schedule buffers, unused EMA copies).
    """

    unet: dict[str, torch.Tensor] = field(default_factory=dict)
    first_stage: dict[str, torch.Tensor] = field(default_factory=dict)
    text_encoder: dict[str, torch.Tensor] = field(default_factory=dict)
    text_encoder_format: str | None = None
    text_encoder_prefix: str = TEXT_ENCODER_PREFIX
    unet_from_ema: bool = False
    ignored_keys: list[str] = field(default_factory=list)

    def present(self) -> list[str]:
        """Names of the components that have at least one tensor."""
        names = ("unet", "first_stage", "text_encoder")
        return [name for name in names if getattr(self, name)]


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _text_encoder_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[str | None, str]:
    """Detect the text encoder's sub-format; returns (format, prefix to strip)."""
    keys = [key for key in state_dict if key.startswith(TEXT_ENCODER_PREFIX)]
    if not keys:
        return None, TEXT_ENCODER_PREFIX
    if all(key.startswith(OPEN_CLIP_TEXT_PREFIX) for key in keys):
        return "open_clip", OPEN_CLIP_TEXT_PREFIX
    if all(key.startswith(HF_CLIP_TEXT_PREFIX) for key in keys):
        return "hf_clip", HF_CLIP_TEXT_PREFIX
    return "unknown", TEXT_ENCODER_PREFIX


def ema_unet_state_dict(
    state_dict: Mapping[str, torch.Tensor], unet_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Map ldm ``LitEma`` buffers (``model_ema.diffusion_modelinput_blocks00weight``) to UNet names.

    Args:
        state_dict: the full checkpoint state dict.
        unet_keys: UNet parameter names without prefix (``input_blocks.0.0.weight``).

    Returns:
        ``{unet key: EMA tensor}`` for every EMA buffer.

    Raises:
        CheckpointError: no EMA buffers, an EMA buffer matching no UNet key, or two UNet keys that
            flatten to the same EMA name.
    """
    ema = {
        name: tensor
        for name, tensor in _strip(state_dict, EMA_PREFIX).items()
        if name not in EMA_BOOKKEEPING_KEYS
    }
    if not ema:
        raise CheckpointError(
            "EMA weights were requested (use_ema=True) but the checkpoint has no 'model_ema.' tensors. "
            "Pass use_ema=False; '-emaonly' checkpoints already store the EMA weights under "
            f"'{UNET_PREFIX}'."
        )
    unet_key_by_flat_name: dict[str, str] = {}
    for key in unet_keys:
        flat_name = (EMA_UNET_ATTRIBUTE + key).replace(".", "")
        if flat_name in unet_key_by_flat_name:
            raise CheckpointError(
                f"UNet keys '{unet_key_by_flat_name[flat_name]}' and '{key}' both flatten to the EMA name "
                f"'{flat_name}'; the LitEma naming cannot tell them apart."
            )
        unet_key_by_flat_name[flat_name] = key
    unmatched = sorted(name for name in ema if name not in unet_key_by_flat_name)
    if unmatched:
        raise CheckpointError(
            f"{len(unmatched)} 'model_ema.' tensors match no UNet key after removing dots "
            f"(first: {unmatched[:10]}); the EMA copy belongs to a different UNet configuration."
        )
    return {unet_key_by_flat_name[name]: tensor for name, tensor in ema.items()}


def split_sd_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    use_ema: bool = False,
    unet_keys: Iterable[str] | None = None,
) -> SDComponents:
    """Split a full SD state dict by prefix into UNet, first stage and text encoder.

    Args:
        state_dict: the checkpoint's tensors (as returned by :func:`load_state_dict_file`).
        use_ema: take the UNet from the ``model_ema.`` copy; UNet keys without an EMA copy (non-
            trainable buffers) keep the ``model.diffusion_model.`` value.
        unet_keys: UNet key list used to undo LitEma's dot removal; defaults to the checkpoint's own
            ``model.diffusion_model.`` keys (pass the model's keys for EMA-only files).

    Returns:
        :class:`SDComponents`.
    """
    text_format, text_prefix = _text_encoder_layout(state_dict)
    components = SDComponents(
        unet=_strip(state_dict, UNET_PREFIX),
        first_stage=_strip(state_dict, FIRST_STAGE_PREFIX),
        text_encoder=_strip(state_dict, text_prefix),
        text_encoder_format=text_format,
        text_encoder_prefix=text_prefix,
    )
    components.ignored_keys = [key for key in state_dict if not key.startswith(SD_PREFIXES)]
    ema_keys = [key for key in state_dict if key.startswith(EMA_PREFIX)]
    if use_ema:
        keys = list(unet_keys) if unet_keys is not None else list(components.unet)
        ema = ema_unet_state_dict(state_dict, keys)
        kept = [key for key in components.unet if key not in ema]
        if kept:
            log.info("EMA: %d UNet tensors have no EMA copy and keep their non-EMA values", len(kept))
        components.unet = {**components.unet, **ema}
        components.unet_from_ema = True
        components.ignored_keys += [key for key in ema_keys if key[len(EMA_PREFIX) :] in EMA_BOOKKEEPING_KEYS]
    else:
        components.ignored_keys += ema_keys
    return components


def _is_full_sd_file(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(key.startswith(SD_PREFIXES) for key in state_dict)


def _without_loss_tensors(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Drop the ``loss.*`` modules (LPIPS, discriminator) that VAE training checkpoints carry."""
    kept = {key: value for key, value in tensors.items() if not key.startswith(FIRST_STAGE_LOSS_PREFIX)}
    if len(kept) < len(tensors):
        log.info("%s: dropping %d VAE training-loss tensors ('loss.*')", path, len(tensors) - len(kept))
    return kept


def _source(path: Path, prefix: str) -> str:
    return f"{path} [{prefix}*]" if prefix else str(path)


def load_sd_checkpoint(
    path: str | Path,
    *,
    unet: nn.Module | None = None,
    first_stage: nn.Module | None = None,
    text_encoder: FrozenOpenCLIPEmbedder | None = None,
    use_ema: bool = False,
) -> dict[str, LoadReport]:
    """Load the given components from one SD file, each with strict key matching.

    The file is either a full SD checkpoint (keys under the prefixes above; schedule buffers and
    training bookkeeping are ignored) or a lone component file without prefixes, in which case
    exactly one component must be given.

    Args:
        path: ``.ckpt`` / ``.safetensors`` / ``.pt`` file.
        unet: a ``UNetModel`` (or a subclass whose pretrained keys equal SD's).
        first_stage: an ``AutoencoderKL``; ``loss.*`` tensors of VAE training checkpoints are dropped.
        text_encoder: a ``FrozenOpenCLIPEmbedder`` / ``FrozenCLIPTextEmbedder``; both text layouts
            (open_clip, transformers) are accepted and converted.
        use_ema: load the UNet from the ``model_ema.`` copy.

    Returns:
        ``{"unet" | "first_stage" | "text_encoder": LoadReport}`` for the components loaded.

    Raises:
        ValueError: no component given.
        CheckpointError: the file lacks a requested component, or EMA weights are missing.
        StateDictMismatchError: a component's keys or shapes differ from the module's.
    """
    path = Path(path).expanduser()
    requested = {
        name: module
        for name, module in (("unet", unet), ("first_stage", first_stage), ("text_encoder", text_encoder))
        if module is not None
    }
    if not requested:
        raise ValueError("load_sd_checkpoint: pass at least one of unet=, first_stage=, text_encoder=")
    state_dict = load_state_dict_file(path)

    if _is_full_sd_file(state_dict):
        unet_keys = list(unet.state_dict()) if unet is not None else None
        components = split_sd_checkpoint(
            state_dict, use_ema=use_ema and unet is not None, unet_keys=unet_keys
        )
        if components.ignored_keys:
            log.info("%s: ignoring %d tensors outside the components", path, len(components.ignored_keys))
        prefixes = {
            "unet": EMA_PREFIX if components.unet_from_ema else UNET_PREFIX,
            "first_stage": FIRST_STAGE_PREFIX,
            "text_encoder": components.text_encoder_prefix,
        }
    else:
        if len(requested) != 1:
            raise CheckpointError(
                f"{path} has no SD prefixes ({', '.join(SD_PREFIXES)}), so it holds a single component; "
                f"pass exactly one of unet=, first_stage=, text_encoder= (got {sorted(requested)})."
            )
        if use_ema:
            raise CheckpointError(
                f"use_ema=True needs a full SD checkpoint with 'model_ema.' keys; {path} has none."
            )
        (name,) = requested
        components = SDComponents(**{name: dict(state_dict)})
        prefixes = {name: ""}

    reports: dict[str, LoadReport] = {}
    for name, module in requested.items():
        tensors = getattr(components, name)
        if not tensors:
            raise CheckpointError(
                f"{path} has no {name} weights (no keys under '{prefixes[name]}'); it holds: "
                f"{', '.join(components.present()) or 'no SD component'}."
            )
        source = _source(path, prefixes[name])
        if name == "text_encoder":
            reports[name] = module.load_pretrained_state_dict(tensors, source=source)
        elif name == "first_stage":
            tensors = _without_loss_tensors(tensors, path)
            reports[name] = load_strict(module, tensors, what="AutoencoderKL", source=source)
        else:
            what = "UNet (EMA weights)" if components.unet_from_ema else "UNet"
            reports[name] = load_strict(module, tensors, what=what, source=source)
    return reports
