"""Sharded checkpoint directories as Lightning's FSDPStrategy writes them, made in one process, and read back whole."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save


def write_sharded_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """`path/` with torch.distributed.checkpoint's `__0_0.distcp` and `.metadata` (the weights under `model`, as
    Lightning stores them) and Lightning's `meta.pt`, written in that order, as by a run of one rank."""
    path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.save({"model": state_dict}, checkpoint_id=path, no_dist=True)
    torch.save(meta, path / "meta.pt")
    return path


def set_mtime(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime))


def read_sharded_checkpoint(path: Path, scratch: Path) -> dict[str, Any]:
    """Every tensor and value of a sharded checkpoint directory, whole (`model`, `optimizer_<i>`), through
    torch.distributed.checkpoint's own converter (written to `scratch`, a file)."""
    dcp_to_torch_save(path, scratch)
    return torch.load(scratch, map_location="cpu", weights_only=True)
