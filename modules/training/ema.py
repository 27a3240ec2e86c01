"""Exponential moving average of the trainable weights.

The shadow weights are buffers of this module, so they are saved and restored with the LightningModule's
state dict (and therefore with every checkpoint), and they cover only the trainable parameters: frozen
weights are never stored twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn


def shadow_buffer_name(param_name: str) -> str:
    """The EMA buffer of parameter `unet.out.0.weight` (net-relative name): `unet__out__0__weight`."""
    return param_name.replace(".", "__")


class ExponentialMovingAverage(nn.Module):
    """EMA of named parameters: shadow = decay * shadow + (1 - decay) * param after every optimizer step.

    decay: the target decay (ART-V supplementary Table 4: 0.9999).
    use_num_updates: ldm's LitEma warm-up, effective decay = min(decay, (1 + n) / (10 + n)), so early
        steps are not dominated by the random/pretrained initial weights.
    """

    def __init__(
        self, named_parameters: Iterable[tuple[str, nn.Parameter]], decay: float, use_num_updates: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay} <model.ema_decay>")
        self.decay = decay
        self.use_num_updates = use_num_updates
        self.param_names: list[str] = []
        for name, param in named_parameters:
            self.param_names.append(name)
            self.register_buffer(shadow_buffer_name(name), param.detach().clone().float())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._backup: list[torch.Tensor] | None = None

    def shadows(self) -> list[torch.Tensor]:
        return [getattr(self, shadow_buffer_name(name)) for name in self.param_names]

    def current_decay(self) -> float:
        if not self.use_num_updates:
            return self.decay
        n = int(self.num_updates.item())
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _matched(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> list[nn.Parameter]:
        params = dict(named_parameters)
        missing = [name for name in self.param_names if name not in params]
        if missing:
            raise KeyError(
                f"EMA tracks parameters the model no longer has: {missing[:5]} ({len(missing)} in all)"
            )
        return [params[name] for name in self.param_names]

    @torch.no_grad()
    def update(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        """shadow += (1 - decay) * (param - shadow), with the warm-up decay above."""
        params = self._matched(named_parameters)
        decay = self.current_decay()
        self.num_updates += 1
        if params:
            torch._foreach_lerp_(self.shadows(), [p.detach().float() for p in params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Overwrite the parameters with the EMA weights."""
        for param, shadow in zip(self._matched(named_parameters), self.shadows(), strict=True):
            param.copy_(shadow.to(param.dtype))

    @contextmanager
    def swapped_in(
        self,
        named_parameters: Iterable[tuple[str, nn.Parameter]],
        whole: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> Iterator[None]:
        """Temporarily load the EMA weights into the parameters (validation, sampling); restore on exit.

        whole: a context in which the parameters have their full shapes and writes to them persist; every write, the
            swap and the restore, happens inside it. Under FSDP, where each rank holds a flat slice of every parameter,
            that is `full_parameters(strategy, writeback=True)` (modules/training/fsdp.py), which every rank must
            enter. Writing to the slices directly would not do: after a forward without backward (validation,
            sampling) FSDP keeps the root unit's gathered parameters and uses them, unchanged, for the next forward
            and for checkpoints. The backup is then of the full weights, on every rank, like the shadows.
        """
        params = self._matched(named_parameters)
        with whole(), torch.no_grad():
            backup = [p.detach().clone() for p in params]
            for param, shadow in zip(params, self.shadows(), strict=True):
                param.copy_(shadow.to(param.dtype))
        try:
            yield
        finally:
            with whole(), torch.no_grad():
                for param, saved in zip(params, backup, strict=True):
                    param.copy_(saved)
