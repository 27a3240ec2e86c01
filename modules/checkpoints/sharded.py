"""Read a training checkpoint, a file or a sharded FSDP directory, in one process (sample.py, eval.py).

A sharded checkpoint (`state_dict_type: sharded`, modules/runtime/checkpoint_discovery.py describes its files) holds
the weights as torch.distributed.checkpoint shards under the key `model` (optimizer states under `optimizer_<i>`) and
everything else in `meta.pt`. `load_sharded_weights` consolidates the `model` part straight into a model built in
this process: torch.distributed.checkpoint reads every tensor's shards, whatever number of ranks wrote them, into the
model's own full tensors; the optimizer states are never read. Keys and shapes must match one to one (the EMA
shadows are buffers, so they come with the weights).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from modules.checkpoints.strict_load import compare_state_dict

SHARD_INDEX_FILE = ".metadata"  # torch.distributed.checkpoint's index of the shards
LIGHTNING_PART_FILE = "meta.pt"  # Lightning's part: all but weights and optimizer states
MODEL_KEY = "model"  # where Lightning's FSDPStrategy puts the LightningModule's state dict


def load_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint without reading sharded weights: a file whole (`state_dict` included); a sharded
    directory's `meta.pt` (step, loops, callbacks, `run_config`; no `state_dict`)."""
    path = Path(path)
    source = path / LIGHTNING_PART_FILE if path.is_dir() else path
    # weights_only: a checkpoint never gets to run code; ours hold only tensors and plain containers
    return torch.load(source, map_location="cpu", weights_only=True)


def load_run_config(path: str | Path) -> dict[str, Any] | None:
    """The training config a checkpoint stores (`run_config`, written by VideoDiffusionModule.on_save_checkpoint),
    or None for a checkpoint without one. A file is memory-mapped, so its weights are not read."""
    path = Path(path)
    source = path / LIGHTNING_PART_FILE if path.is_dir() else path
    return torch.load(source, map_location="cpu", weights_only=True, mmap=not path.is_dir()).get("run_config")


def load_sharded_weights(model: nn.Module, path: str | Path) -> None:
    """Load the weights of the sharded checkpoint directory `path` into `model` (full tensors, any device), in this
    process alone. Raises a ValueError naming `ckpt_path` when the keys or shapes differ from the model's."""
    path = Path(path)
    reader = dcp.FileSystemReader(str(path))
    prefix = f"{MODEL_KEY}."
    stored = {
        key.removeprefix(prefix): torch.empty(entry.size, dtype=entry.properties.dtype, device="meta")
        for key, entry in reader.read_metadata().state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(entry, TensorStorageMetadata)
    }
    report = compare_state_dict(model, stored, what="model", source=str(path))
    if not report.is_exact:
        first = (
            str(report.shape_mismatches[0])
            if report.shape_mismatches
            else (report.missing or report.unexpected)[0]
        )
        raise ValueError(
            f"ckpt_path={path} does not match the model: {len(report.missing)} missing, {len(report.unexpected)} "
            f"unexpected, {len(report.shape_mismatches)} shape-mismatched keys (first: {first}) <ckpt_path>"
        )
    state = {MODEL_KEY: model.state_dict()}
    with warnings.catch_warnings():
        # one process on purpose; torch warns that it assumes so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, storage_reader=reader, no_dist=True)
    model.load_state_dict(state[MODEL_KEY], strict=True)
