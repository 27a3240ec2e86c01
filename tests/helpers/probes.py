"""Callbacks that tests add to a `train.py` run (`+callbacks.<name>._target_=tests.helpers.probes.<Class>`) to
inject faults or record what every rank holds."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import torch


def trainable_and_ema(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The trainable weights and the EMA shadows, each flattened into one fp32 vector."""
    weights = [p.detach().float().flatten() for _, p in pl_module.net.trainable_named_parameters()]
    return {
        "weights": torch.cat(weights).clone(),
        "ema": torch.cat([shadow.flatten() for shadow in pl_module.ema.shadows()]).clone(),
    }


class NonFiniteBatch(L.Callback):
    """Fill the video of training micro-batch `batch_index` (counted over the run) with NaN on rank `rank`."""

    def __init__(self, rank: int, batch_index: int) -> None:
        self.rank = rank
        self.batch_index = batch_index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.fit_loop.total_batch_idx == self.batch_index:
            batch["video"].fill_(float("nan"))


class RankStateProbe(L.Callback):
    """After every optimizer step (and at the start) save each rank's weights, EMA and skip counter to
    `<directory>/rank<R>_step<S>.pt`; at the start also `rank<R>.json` with what the DDP wrapper broadcasts."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {**trainable_and_ema(pl_module), "skipped": int(pl_module.skipped_nonfinite_steps)}
        torch.save(state, self.directory / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        wrapper = trainer.strategy.model
        info = {"broadcast_buffers": getattr(wrapper, "broadcast_buffers", None), "world": trainer.world_size}
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))
        self._save(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self._save(trainer, pl_module)


class SignalOnce(L.Callback):
    """Send `signal_name` to this process while a fresh run (not a resumed one) trains optimizer step `step`, as a
    scheduler's preemption would (the run then saves at the end of that step); a relaunch with the same callback
    runs on."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.signum = signal.Signals[signal_name]
        self._resumed = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._resumed = trainer.global_step > 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._resumed and trainer.global_step == self.step - 1:
            self._resumed = True
            os.kill(os.getpid(), self.signum)
