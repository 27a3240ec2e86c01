"""A stand-in for SD's pretrained UNet file at tiny size, for SCVideo's `trainable: paper` (frozen pretrained
spatial layers): the SD-shared parameters of the tiny SCVideo UNet, as a bare UNet state dict in safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from modules.scvideo import is_new_parameter
from tests.conftest import compose_config


def write_tiny_sd_unet(path: Path, seed: int) -> Path:
    """The tiny backbone's SD-shared UNet parameters (its own init plus a seeded 1% perturbation, so that files
    of different seeds differ and still train) written to `path`."""
    cfg = compose_config("train", [], path.parent / f"compose_{path.stem}")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = instantiate(cfg.model.net)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        key: (value + 0.01 * torch.randn(value.shape, generator=generator)).contiguous()
        for key, value in net.unet.state_dict().items()
        if not is_new_parameter(key)
    }
    save_file(tensors, str(path))
    return path


def paper_trainable(pretrained: Path) -> list[str]:
    """Overrides training the tiny SCVideo as the paper does: `trainable: paper`, SD-shared weights from a file."""
    return ["model.net.trainable=paper", f"model.net.pretrained={pretrained}"]
