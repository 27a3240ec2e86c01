"""ModelCheckpoint that also saves the weights a run ends with.

Lightning's ModelCheckpoint writes `last.ckpt` at train end only if it never wrote one before, so a run stopped by
`trainer.max_time` (the toy runs' 15-minute budget), or by a `max_steps` that is not a multiple of
`every_n_train_steps`, silently loses every step after its last periodic save: up to `every_n_train_steps - 1`
steps of training, and `sample.py` / `eval.py` then load the older weights.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

log = logging.getLogger(__name__)


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments) whose `last.ckpt` always holds the final step when training ends."""

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or trainer.global_step == self._last_global_step_saved:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        log.info("training ended at step %d: saved %s", trainer.global_step, self.last_model_path)
