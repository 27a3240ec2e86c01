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


class ShardedTrainingProbe(L.Callback):
    """Records, on every rank, what FSDP makes hard to see, as JSON lines in `<directory>/rank<R>.jsonl`: the norm of
    the whole gradient (all ranks' slices) before and after clipping, and during / after each validation the
    largest difference of the whole trainable weights from the EMA shadows / from the training weights.

    Register it after `callbacks.ema_weight_swap` (a `+callbacks.<name>` entry is), so that its validation hooks
    see the swapped-in and the restored weights."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self._training_weights: torch.Tensor | None = None

    def _write(self, trainer: L.Trainer, record: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"rank{trainer.global_rank}.jsonl", "a") as stream:
            stream.write(json.dumps({"step": trainer.global_step, **record}) + "\n")

    @staticmethod
    def _gradient_norm(pl_module: L.LightningModule) -> float:
        """sqrt of the sum over ranks of each rank's squared gradient slices (FULL_SHARD: disjoint slices)."""
        grads = [p.grad for _, p in pl_module.net.trainable_named_parameters() if p.grad is not None]
        squares = torch.stack([g.detach().double().pow(2).sum() for g in grads]).sum()
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(squares)
        return float(squares.sqrt())

    @staticmethod
    def _whole_weights(trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        from modules.training.fsdp import full_parameters

        with full_parameters(trainer.strategy):
            return torch.cat(
                [p.detach().flatten().clone() for _, p in pl_module.net.trainable_named_parameters()]
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._write(trainer, {"event": "before_clipping", "grad_norm": self._gradient_norm(pl_module)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._write(trainer, {"event": "after_clipping", "grad_norm": self._gradient_norm(pl_module)})
        self._training_weights = self._whole_weights(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        weights = self._whole_weights(trainer, pl_module)
        ema = torch.cat([shadow.flatten() for shadow in pl_module.ema.shadows()])
        record = {"event": "validation", "from_ema": float((weights - ema).abs().max())}
        if self._training_weights is not None:
            record["ema_from_training"] = float((self._training_weights - ema).abs().max())
        self._write(trainer, record)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._training_weights is None:
            return
        weights = self._whole_weights(trainer, pl_module)
        self._write(
            trainer,
            {"event": "restored", "from_training": float((weights - self._training_weights).abs().max())},
        )
