"""Load a state dict into a module with a readable report of what matched.

- :func:`load_strict`: every key of the module must be in the state dict and vice versa, with equal
  shapes; otherwise nothing is loaded and :class:`StateDictMismatchError` lists the missing keys,
  the unexpected keys and the shape mismatches (the first few of each, plus counts), naming the file
  and the component.
- :func:`load_partial`: for models that extend a pretrained one (SCVideo's inflated UNet, ART-V's
  adapters): every key in the state dict must match a parameter of the module (same name and shape),
  while module keys absent from the file are allowed when ``expected_missing(key)`` says they are
  new parameters. The returned :class:`LoadReport` lists what was loaded and what kept its init.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

MAX_LISTED_KEYS = 10


@dataclass(frozen=True)
class ShapeMismatch:
    """One key present on both sides with different shapes."""

    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.key}: checkpoint {list(self.checkpoint_shape)} vs model {list(self.model_shape)}"


@dataclass
class LoadReport:
    """Which keys of a state dict met which keys of a module.

    ``missing``: module keys absent from the state dict; ``unexpected``: state-dict keys the module
    does not have; ``loaded``: keys equal in name and shape, which are copied into the module when the
    load succeeds (a failed load copies nothing).
    """

    what: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[ShapeMismatch] = field(default_factory=list)

    @property
    def is_exact(self) -> bool:
        """True when keys and shapes match one to one."""
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def describe(self, max_listed: int = MAX_LISTED_KEYS) -> str:
        """Multi-line summary: counts, then the first ``max_listed`` keys of each kind.

        ``matched`` counts the keys equal in name and shape (those copied when loading succeeds).
        """
        lines = [
            f"{len(self.loaded)} matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatches)} shape mismatches"
        ]
        for title, items in (
            ("missing keys (in the model, not in the file)", self.missing),
            ("unexpected keys (in the file, not in the model)", self.unexpected),
            ("shape mismatches", self.shape_mismatches),
        ):
            if items:
                lines.append(f"  {title} [{len(items)}]:")
                lines.extend(f"    {item}" for item in items[:max_listed])
                if len(items) > max_listed:
                    lines.append(f"    ... and {len(items) - max_listed} more")
        return "\n".join(lines)


class StateDictMismatchError(RuntimeError):
    """A state dict does not fit a module; the message lists the offending keys."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


def compare_state_dict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str, source: str
) -> LoadReport:
    """Match ``state_dict`` against ``module.state_dict()`` by key and shape without loading.

    ``loaded`` lists the keys that match by name and shape (those a load would copy).
    """
    model_state = module.state_dict()
    report = LoadReport(what=what, source=source)
    for key, model_tensor in model_state.items():
        if key not in state_dict:
            report.missing.append(key)
        elif tuple(state_dict[key].shape) != tuple(model_tensor.shape):
            report.shape_mismatches.append(
                ShapeMismatch(key, tuple(state_dict[key].shape), tuple(model_tensor.shape))
            )
        else:
            report.loaded.append(key)
    report.unexpected = [key for key in state_dict if key not in model_state]
    return report


def _copy_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], keys: list[str]) -> None:
    """Copy ``keys`` of ``state_dict`` into the module (cast to each parameter's dtype and device)."""
    module.load_state_dict({key: state_dict[key] for key in keys}, strict=False)


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str = "UNet",
    source: str = "<in-memory state dict>",
    max_listed: int = MAX_LISTED_KEYS,
) -> LoadReport:
    """Load ``state_dict`` into ``module`` only if keys and shapes match exactly.

    Args:
        module: the target module.
        state_dict: ``{name: tensor}`` with the module's own names (prefixes already stripped).
        what: the component's name for messages ("UNet", "AutoencoderKL", "text encoder").
        source: where the tensors came from (file path and prefix) for messages.
        max_listed: how many keys of each kind the error message lists.

    Raises:
        StateDictMismatchError: keys are missing or unexpected, or shapes differ; nothing is loaded.
    """
    report = compare_state_dict(module, state_dict, what=what, source=source)
    if not report.is_exact:
        raise StateDictMismatchError(
            f"Cannot load {what} from {source}: the state dict does not match the model (strict "
            f"loading). Check that the model config matches the checkpoint.\n{report.describe(max_listed)}",
            report,
        )
    _copy_into(module, state_dict, report.loaded)
    log.info("loaded %s from %s (%d tensors, strict)", what, source, len(report.loaded))
    return report


def load_partial(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str,
    source: str = "<in-memory state dict>",
    expected_missing: Callable[[str], bool] | None = None,
    allow_unexpected: bool = False,
    max_listed: int = MAX_LISTED_KEYS,
) -> LoadReport:
    """Load the parameters a pretrained state dict shares with ``module``; report the rest.

    Shared keys are checked strictly (equal shapes). Module keys absent from the file keep their
    initial values and are reported as ``missing``; when ``expected_missing`` is given, each missing
    key must satisfy it (e.g. ``lambda key: ".temporal_" in key`` for SCVideo's new layers), so a
    pretrained parameter that fails to load is still an error.

    Args:
        module: the target module.
        state_dict: ``{name: tensor}`` with the module's own names.
        what: the component's name for messages.
        source: where the tensors came from, for messages.
        expected_missing: predicate naming the module keys allowed to be absent; ``None`` allows any.
        allow_unexpected: when False (default), file keys the module lacks are an error.
        max_listed: how many keys of each kind messages list.

    Returns:
        The :class:`LoadReport` (``loaded``, ``missing``, ``unexpected``).

    Raises:
        StateDictMismatchError: shape mismatches, unexpected keys (unless allowed), or missing keys
            that ``expected_missing`` rejects; nothing is loaded.
    """
    report = compare_state_dict(module, state_dict, what=what, source=source)
    problems = []
    if report.shape_mismatches:
        problems.append(f"{len(report.shape_mismatches)} shape mismatches")
    if report.unexpected and not allow_unexpected:
        problems.append(f"{len(report.unexpected)} unexpected keys")
    if expected_missing is not None:
        not_new = [key for key in report.missing if not expected_missing(key)]
        if not_new:
            problems.append(
                f"{len(not_new)} missing keys that are not new parameters (first: {not_new[:max_listed]})"
            )
    if problems:
        raise StateDictMismatchError(
            f"Cannot load {what} from {source}: {', '.join(problems)}.\n{report.describe(max_listed)}",
            report,
        )
    _copy_into(module, state_dict, report.loaded)
    log.info("loaded %s from %s: %s", what, source, report.describe(max_listed))
    return report
