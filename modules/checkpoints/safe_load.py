"""Read a state dict from a weight file without running code stored in it.

Two formats are read:

- ``.safetensors``: plain tensors and a JSON header; nothing executable.
- anything else (``.ckpt``, ``.pt``, ``.pth``, ``.bin``): ``torch.load(path, map_location="cpu",
  weights_only=True)``. The restricted unpickler rebuilds tensors and plain containers only; any
  other Python object in the file is refused with :class:`UnsafeCheckpointError`.

Lightning / ldm ``.ckpt`` files wrap the weights in a top-level ``state_dict`` key; it is unwrapped.

The original SD 1.x training checkpoints (``sd-v1-4.ckpt`` and its siblings) also pickle, next to
the weights, Lightning's ``ModelCheckpoint`` class as a dictionary key of their ``callbacks``
entry, and numpy scalars inside it. ``weights_only`` refuses those. They are therefore allowed
*by name* and rebuilt as :class:`InertPickledObject` placeholders, which store their arguments and
run nothing; the training bookkeeping they belong to is discarded with everything else outside
``state_dict``. No other global is allowed.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A weight file could not be read (truncated, not a checkpoint, or not a state dict)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle-based weight file refers to Python objects that ``weights_only`` will not rebuild."""


class InertPickledObject:
    """Stand-in for the few training-bookkeeping globals found in ldm ``.ckpt`` files.

    Constructing or restoring it stores the pickled arguments and state; it never imports nor calls
    the class it replaces. Instances only ever end up outside ``state_dict`` and are dropped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Fully qualified names of the globals that the original ldm/Lightning checkpoints pickle outside
# their weights (the SD 1.x `.ckpt` files carry Lightning's ModelCheckpoint class as a dictionary key
# of `callbacks`, and numpy scalars/dtypes among the callback's bookkeeping values).
_BOOKKEEPING_GLOBALS: tuple[str, ...] = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
)


def _inert_placeholder(qualified_name: str) -> type[InertPickledObject]:
    """A distinct placeholder class per allowed name (torch keys its allow-list by object)."""
    return type(f"Inert[{qualified_name}]", (InertPickledObject,), {})


_BOOKKEEPING_ALLOWLIST = [(_inert_placeholder(name), name) for name in _BOOKKEEPING_GLOBALS]


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"Cannot read safetensors file {path}: {error}. The file is truncated (an interrupted "
            "download or copy) or is not a safetensors file; download or convert it again."
        ) from error


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's long weights_only message that names the refused global."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    naming_the_global = [line for line in lines if "GLOBAL" in line]
    return (naming_the_global or lines or [repr(error)])[0]


def _load_pickle_checkpoint(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_BOOKKEEPING_ALLOWLIST):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: the file contains arbitrary Python objects and will not be "
            f"unpickled (only tensors and plain containers are read, torch.load(weights_only=True)). "
            f"torch reported: {_refusal_reason(error)} If you trust the file's origin, convert it to "
            ".safetensors with a trusted tool and pass that file instead."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"Cannot read checkpoint {path}: {error}. The file is truncated (an interrupted download "
            "or copy) or is not a PyTorch checkpoint; download it again or pass a .safetensors file."
        ) from error


def _as_tensor_dict(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` and check the result maps names to tensors."""
    if isinstance(payload, Mapping) and "state_dict" in payload:
        dropped = sorted(str(key) for key in payload if key != "state_dict")
        if dropped:
            log.info("%s: using its 'state_dict' entry; ignoring top-level entries %s", path, dropped)
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(payload).__name__}, not a state dict (a mapping of parameter names "
            "to tensors, optionally under a top-level 'state_dict' key)."
        )
    not_tensors = [str(key) for key, value in payload.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{path} is not a plain state dict: {len(not_tensors)} entries are not tensors "
            f"(first: {not_tensors[:5]}). Expected a mapping of parameter names to tensors."
        )
    return {str(key): value for key, value in payload.items()}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the state dict stored in ``path`` onto the CPU without executing anything in it.

    Args:
        path: a ``.safetensors`` file, or a PyTorch file written by ``torch.save`` (``.ckpt``,
            ``.pt``, ``.pth``, ``.bin``), either a bare state dict or a Lightning/ldm checkpoint
            whose weights sit under ``state_dict``.

    Returns:
        ``{name: tensor}`` with the names exactly as stored (prefixes such as
        ``model.diffusion_model.`` are kept; see :func:`split_sd_checkpoint`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: a pickle file refers to Python objects other than tensors.
        CheckpointError: the file is truncated, unreadable, or not a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Weight file not found: {path} (pass the path of a local checkpoint file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Weight file {path} is empty (0 bytes); download or copy it again.")
    if path.suffix == ".safetensors":
        state_dict = _load_safetensors(path)
    else:
        state_dict = _as_tensor_dict(_load_pickle_checkpoint(path), path)
    log.info("read %d tensors from %s", len(state_dict), path)
    return state_dict
