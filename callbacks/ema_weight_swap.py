"""Validate (and log samples) with the EMA weights, then restore the training weights."""

from __future__ import annotations

from contextlib import ExitStack

import lightning as L


class EMAWeightSwap(L.Callback):
    """Swap the EMA weights into `pl_module.net` for every validation epoch.

    The swap happens in `on_validation_epoch_start` and is undone in `on_validation_epoch_end`, so the
    optimizer always continues from the raw training weights.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._stack: ExitStack | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ema = getattr(pl_module, "ema", None)
        if not self.enabled or ema is None:
            return
        self._stack = ExitStack()
        self._stack.enter_context(ema.swapped_in(pl_module.net.trainable_named_parameters()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
