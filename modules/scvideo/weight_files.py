"""Weight files of SCVideo: the SD 1.x checkpoint it starts from, and the temporal-weights file it produces.

- `load_pretrained_unet`: the UNet part of an SD 1.x `.ckpt`/`.safetensors` (a full checkpoint with
  `model.diffusion_model.` keys, or a bare UNet state dict) goes into every parameter shared with SD, strictly
  (no missing shared key, no unexpected key, equal shapes); the new layers keep their identity init and are
  reported.
- `save_temporal_weights` / `load_temporal_weights`: a safetensors file with the parameters training may
  change (the new layers plus the rest of the trainable set, e.g. the fine-tuned `attn1`/`attn2` under
  `trainable=paper`), keyed by UNet key. Raw SD weights + this file rebuild the trained network, which is how
  `sample.py` can run SCVideo without a full Lightning checkpoint.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from modules.checkpoints import (
    UNET_PREFIX,
    CheckpointError,
    LoadReport,
    load_partial,
    load_state_dict_file,
    split_sd_checkpoint,
)
from modules.scvideo.video_unet import NEW_MODULE_NAMES, is_new_parameter

if TYPE_CHECKING:
    from modules.scvideo.scvideo_denoiser import SCVideoDenoiser

log = logging.getLogger(__name__)

TEMPORAL_WEIGHTS_FORMAT = "scvideo-temporal-weights"


def describe_new_parameters(unet: nn.Module, keys: list[str]) -> str:
    """One line counting new-layer tensors and values by layer kind, e.g. `temporal_conv: 22 tensors, ...`."""
    parameters = dict(unet.named_parameters())
    tensors: Counter[str] = Counter()
    values: Counter[str] = Counter()
    for key in keys:
        kind = next(part for part in key.split(".") if part in NEW_MODULE_NAMES)
        tensors[kind] += 1
        values[kind] += parameters[key].numel() if key in parameters else 0
    return ", ".join(f"{kind}: {tensors[kind]} tensors / {values[kind]:,} values" for kind in sorted(tensors))


def _unet_tensors(state_dict: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The UNet tensors of a full SD checkpoint (prefix stripped) or of a bare UNet state dict."""
    if any(key.startswith(UNET_PREFIX) for key in state_dict):
        return split_sd_checkpoint(state_dict).unet, f"{path} [{UNET_PREFIX}*]"
    return dict(state_dict), str(path)


def load_pretrained_unet(unet: nn.Module, path: str | Path) -> LoadReport:
    """Load SD 1.x UNet weights into the shared parameters of SCVideo's video UNet.

    Args:
        unet: a `UNetModel` built with `SCVideoBlockFactory` (SD keys + new keys).
        path: SD checkpoint (`.ckpt`, `.safetensors`), full or UNet only.

    Returns:
        The load report; `report.missing` are exactly the new parameters, left at their identity init.

    Raises:
        StateDictMismatchError: a shared SD parameter is missing from the file, the file has keys the model
            lacks, or shapes differ (the backbone config does not match the checkpoint).
    """
    path = Path(path).expanduser()
    tensors, source = _unet_tensors(load_state_dict_file(path), path)
    if not tensors:
        raise CheckpointError(f"{path} has no UNet weights (no '{UNET_PREFIX}' keys) <model.net.pretrained>")
    report = load_partial(
        unet,
        tensors,
        what="SCVideo UNet (parameters shared with SD 1.x)",
        source=source,
        expected_missing=is_new_parameter,
    )
    log.info(
        "SCVideo: %d SD tensors loaded strictly from %s <model.net.pretrained>; %d new tensors keep their "
        "identity init (%s)",
        len(report.loaded),
        source,
        len(report.missing),
        describe_new_parameters(unet, report.missing),
    )
    return report


def save_temporal_weights(net: SCVideoDenoiser, path: str | Path) -> list[str]:
    """Write the parameters training may change (`net.trained_parameter_names()`) as safetensors.

    Keys are UNet keys (`input_blocks.1.0.temporal_conv.weight`, ...); the metadata names the format and the
    trainable set. Returns the keys written.
    """
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(
            f"temporal weights are written as safetensors; use a '.safetensors' path, got {path}"
        )
    parameters = dict(net.unet.named_parameters())
    keys = net.trained_parameter_names()
    tensors = {key: parameters[key].detach().to("cpu").contiguous().clone() for key in keys}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": TEMPORAL_WEIGHTS_FORMAT, "trainable": net.trainable})
    log.info("wrote %d SCVideo tensors (trainable=%s) to %s", len(keys), net.trainable, path)
    return keys


def load_temporal_weights(unet: nn.Module, path: str | Path) -> LoadReport:
    """Load a file written by `save_temporal_weights` into SCVideo's video UNet.

    Every key of the file must be a UNet parameter of the same shape, and every new parameter must be in the
    file (a file without them would silently leave the identity init); SD parameters absent from the file
    keep their current (pretrained) values.
    """
    path = Path(path).expanduser()
    report = load_partial(
        unet,
        load_state_dict_file(path),
        what="SCVideo temporal weights",
        source=str(path),
        expected_missing=lambda key: not is_new_parameter(key),
    )
    log.info(
        "SCVideo: %d tensors loaded from %s <model.net.temporal_weights>; %d SD tensors keep their values",
        len(report.loaded),
        path,
        len(report.missing),
    )
    return report
