"""Validate (and log samples) with the EMA weights, then restore the training weights."""

from __future__ import annotations

from contextlib import ExitStack

import lightning as L


class EMAWeightSwap(L.Callback):
    """Swap the EMA weights into `pl_module.net` for every validation epoch.

    The swap happens in `on_validation_epoch_start` and is undone in `on_validation_epoch_end`, so the
    optimizer always continues from the raw training weights. Under FSDP both hooks gather the full parameters, on
    every rank (`VideoDiffusionModule.ema_weights`).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._stack: ExitStack | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or getattr(pl_module, "ema", None) is None:
            return
        self._stack = ExitStack()
        self._stack.enter_context(pl_module.ema_weights())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
