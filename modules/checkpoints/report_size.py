"""Size of a training checkpoint by part.

    python -m modules.checkpoints.report_size logs/train/runs/<run>/checkpoints/last.ckpt
    python -m modules.checkpoints.report_size logs/train/runs/<run>/checkpoints/step00000500.ckpt/  # sharded FSDP

Parts, from the tensors' shapes and dtypes (nothing is loaded: a file is memory-mapped, a sharded directory's
`.metadata` read):
- trainable weights: `net.*` tensors with an EMA shadow (the EMA covers exactly the trainable parameters);
- EMA shadows: `ema.*`;
- optimizer state: every tensor of the optimizer states (AdamW: two fp32 moments and a step per parameter);
- frozen weights: `net.*` tensors without an EMA shadow (frozen parameters and the net's buffers) and the frozen
  encoders (`first_stage.*`, `text_encoder.*`), which only FSDP checkpoints keep;
- other: the remaining tensors (noise schedule, counters) and everything else on disk (loops, callbacks, run
  config, file format).
Without EMA shadows in the checkpoint every `net.*` tensor counts as trainable. Frozen net weights the checkpoint
left out (modules/checkpoints/frozen_weights.py) are listed under the table with the file they come from.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modules.checkpoints.frozen_weights import FINGERPRINT_KEY, FrozenWeightsFingerprint
from modules.training.ema import shadow_buffer_name
from modules.training.video_diffusion_module import FROZEN_PREFIXES

PARTS = ("trainable weights", "EMA shadows", "optimizer state", "frozen weights", "other")
EMA_PREFIX = "ema."
NET_PREFIX = "net."
# how Lightning's FSDPStrategy names the parts of a sharded checkpoint (torch.distributed.checkpoint keys)
SHARDED_MODEL_PREFIX = "model."
SHARDED_OPTIMIZER_PREFIX = "optimizer_"
SHARDED_METADATA_FILE = "meta.pt"


def state_dict_parts(keys: Iterable[str]) -> dict[str, str]:
    """The part of every key of a VideoDiffusionModule checkpoint's state dict."""
    keys = set(keys)
    has_ema = any(key.startswith(EMA_PREFIX) for key in keys)

    def part(key: str) -> str:
        if key.startswith(EMA_PREFIX):
            return "EMA shadows"
        if key.startswith(FROZEN_PREFIXES):
            return "frozen weights"
        if key.startswith(NET_PREFIX):
            shadow = EMA_PREFIX + shadow_buffer_name(key.removeprefix(NET_PREFIX))
            return "trainable weights" if not has_ema or shadow in keys else "frozen weights"
        return "other"

    return {key: part(key) for key in keys}


@dataclass
class CheckpointSize:
    """Bytes and tensor counts per part (`PARTS`) of one checkpoint, and what else it records."""

    path: Path
    sharded: bool
    disk_bytes: int
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    tensors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    global_step: int | None = None
    has_ema: bool = True
    left_out: FrozenWeightsFingerprint | None = None

    def add(self, part: str, nbytes: int) -> None:
        self.bytes[part] += nbytes
        self.tensors[part] += 1


def _tensors(node: Any) -> Iterator[Tensor]:
    if isinstance(node, Tensor):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _tensors(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _tensors(value)


def _storage_bytes(tensor: Tensor, seen: set[int]) -> int:
    """Bytes of the tensor's storage as saved, counted once per storage."""
    storage = tensor.untyped_storage()
    if storage.data_ptr() in seen:
        return 0
    seen.add(storage.data_ptr())
    return storage.nbytes()


def _record_extras(size: CheckpointSize, checkpoint: Mapping[str, Any]) -> None:
    size.global_step = checkpoint.get("global_step")
    if checkpoint.get(FINGERPRINT_KEY) is not None:
        size.left_out = FrozenWeightsFingerprint.from_checkpoint(checkpoint[FINGERPRINT_KEY])


def file_checkpoint_size(path: Path) -> CheckpointSize:
    """Parts of a single-file Lightning checkpoint (memory-mapped: no tensor data is read)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    size = CheckpointSize(path, sharded=False, disk_bytes=path.stat().st_size)
    state = checkpoint.get("state_dict", {})
    size.has_ema = any(key.startswith(EMA_PREFIX) for key in state)
    parts = state_dict_parts(state)
    seen: set[int] = set()
    for key, tensor in state.items():
        size.add(parts[key], _storage_bytes(tensor, seen))
    for tensor in _tensors(checkpoint.get("optimizer_states", [])):
        size.add("optimizer state", _storage_bytes(tensor, seen))
    rest = {key: value for key, value in checkpoint.items() if key not in ("state_dict", "optimizer_states")}
    for tensor in _tensors(rest):
        size.add("other", _storage_bytes(tensor, seen))
    _record_extras(size, checkpoint)
    return size


def sharded_checkpoint_size(path: Path) -> CheckpointSize:
    """Parts of a sharded FSDP checkpoint directory, from its torch.distributed.checkpoint metadata."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    disk_bytes = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    size = CheckpointSize(path, sharded=True, disk_bytes=disk_bytes)
    entries = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    tensors = {key: entry for key, entry in entries.items() if isinstance(entry, TensorStorageMetadata)}
    parts = state_dict_parts(
        key.removeprefix(SHARDED_MODEL_PREFIX) for key in tensors if key.startswith(SHARDED_MODEL_PREFIX)
    )
    size.has_ema = any(key.startswith(EMA_PREFIX) for key in parts)
    for key, entry in tensors.items():
        nbytes = entry.size.numel() * entry.properties.dtype.itemsize
        if key.startswith(SHARDED_MODEL_PREFIX):
            size.add(parts[key.removeprefix(SHARDED_MODEL_PREFIX)], nbytes)
        elif key.startswith(SHARDED_OPTIMIZER_PREFIX):
            size.add("optimizer state", nbytes)
        else:
            size.add("other", nbytes)
    metadata = path / SHARDED_METADATA_FILE
    if metadata.is_file():
        _record_extras(size, torch.load(metadata, map_location="cpu", weights_only=True))
    return size


def checkpoint_size(path: str | Path) -> CheckpointSize:
    """Parts of a checkpoint file or sharded directory; what is not a tensor counts as `other`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = sharded_checkpoint_size(path) if path.is_dir() else file_checkpoint_size(path)
    size.bytes["other"] += max(0, size.disk_bytes - sum(size.bytes.values()))
    return size


def format_bytes(nbytes: float) -> str:
    """`7.21 GB` (powers of 1000, as disks are sold)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.0f} B"


def report(size: CheckpointSize) -> str:
    """The size table of one checkpoint, as printed by the command."""
    kind = "sharded FSDP directory" if size.sharded else "file"
    step = "?" if size.global_step is None else size.global_step
    lines = [
        f"{size.path} ({kind}, global step {step}): {format_bytes(size.disk_bytes)} on disk "
        f"({size.disk_bytes:,} bytes)",
        f"{'part':<18} {'tensors':>8} {'bytes':>16} {'size':>10} {'share':>7}",
    ]
    for part in PARTS:
        share = 100.0 * size.bytes[part] / size.disk_bytes if size.disk_bytes else 0.0
        lines.append(
            f"{part:<18} {size.tensors[part]:>8} {size.bytes[part]:>16,} {format_bytes(size.bytes[part]):>10} "
            f"{share:>6.1f}%"
        )
    if not size.has_ema:
        lines.append(
            "no EMA shadows: trainable and frozen net weights cannot be told apart, all count as trainable"
        )
    if size.left_out is not None:
        lines.append(
            f"frozen net weights left out ({size.left_out.values:,} values, rebuilt from backbone.pretrained): "
            f"{size.left_out.describe()}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint files or sharded directories")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    missing = [str(path) for path in args.checkpoints if not path.exists()]
    if missing:
        parser.error(f"checkpoint not found: {', '.join(missing)}")
    sys.stdout.write("\n\n".join(report(checkpoint_size(path)) for path in args.checkpoints) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
