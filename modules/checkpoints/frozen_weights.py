"""Frozen pretrained weights in training checkpoints: left out, and fingerprinted instead.

SCVideo's `trainable: paper` freezes SD 1.4's spatial layers (3.1 GB of fp32 weights). They never change in
training, so every periodic checkpoint would store one more copy of the pretrained file. When the net rebuilds its
frozen parameters from files at build (`VideoDenoiser.frozen_weight_files`), a (non-FSDP) checkpoint leaves them
out and stores their fingerprint: the files (path and size, for the message) and a SHA-256 of the frozen tensors'
names, dtypes, shapes and values, computed once when the model is built (about 2 s for SD 1.4's 3.1 GB on one CPU
core). Loading compares the stored fingerprint with the one of the model just built, and refuses a checkpoint that
was trained on other frozen values (another SD file, a different release of it) with one line naming
`backbone.pretrained`. Only the values decide: the file may move between machines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# the checkpoint entry holding the fingerprint; present exactly when the frozen net weights were left out
FINGERPRINT_KEY = "frozen_net_weights"


class FrozenWeightsMismatchError(ValueError):
    """A checkpoint left out frozen weights that differ from (or are absent in) the model being loaded."""


@dataclass(frozen=True)
class FrozenWeightsFingerprint:
    """What a checkpoint needs to know about the frozen weights it leaves out.

    tensors: number of frozen tensors; values: their total number of elements; sha256: hex digest of their names,
    dtypes, shapes and bytes in name order; files: (path, size in bytes) of the files they were loaded from.
    """

    tensors: int
    values: int
    sha256: str
    files: tuple[tuple[str, int], ...]

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain containers only, so that `torch.load(weights_only=True)` reads it back."""
        return {
            "tensors": self.tensors,
            "values": self.values,
            "sha256": self.sha256,
            "files": [{"path": path, "bytes": size} for path, size in self.files],
        }

    @classmethod
    def from_checkpoint(cls, entry: Mapping[str, Any]) -> FrozenWeightsFingerprint:
        files = tuple((str(item["path"]), int(item["bytes"])) for item in entry["files"])
        return cls(int(entry["tensors"]), int(entry["values"]), str(entry["sha256"]), files)

    def describe(self) -> str:
        """`/sd/sd-v1-4.ckpt (4,265,380,512 bytes): 508 tensors, sha256 1a2b3c4d5e6f`."""
        files = ", ".join(f"{path} ({size:,} bytes)" for path, size in self.files) or "no file"
        return f"{files}: {self.tensors} tensors, sha256 {self.sha256[:12]}"


def fingerprint_frozen_weights(
    named_tensors: Iterable[tuple[str, Tensor]], files: Sequence[str | Path]
) -> FrozenWeightsFingerprint:
    """Fingerprint of `named_tensors` (real tensors, any device) loaded from `files` (which must exist)."""
    digest = hashlib.sha256()
    tensors = values = 0
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
        tensors += 1
        values += data.numel()
    paths = [Path(file).expanduser().resolve() for file in files]
    return FrozenWeightsFingerprint(
        tensors, values, digest.hexdigest(), tuple((str(path), path.stat().st_size) for path in paths)
    )


def check_frozen_weights(
    stored: Mapping[str, Any] | None, current: FrozenWeightsFingerprint | None, checkpoint: str
) -> None:
    """Refuse a checkpoint whose left-out frozen weights (`stored`, its `FINGERPRINT_KEY` entry; None when it holds
    them) are not the ones the model now has (`current`; None when the model does not rebuild them from files)."""
    if stored is None:
        return
    trained = FrozenWeightsFingerprint.from_checkpoint(stored)
    if current is None:
        raise FrozenWeightsMismatchError(
            f"{checkpoint} leaves out the frozen weights it was trained on ({trained.describe()}), but this model "
            "loads no pretrained file for them: set backbone.pretrained to the file it was trained with"
        )
    if current.sha256 != trained.sha256:
        raise FrozenWeightsMismatchError(
            f"{checkpoint} was trained on the frozen weights of {trained.describe()}, but backbone.pretrained now "
            f"gives {current.describe()}: pass the backbone.pretrained file it was trained with"
        )
