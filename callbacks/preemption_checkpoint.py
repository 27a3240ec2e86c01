"""Checkpoint and stop cleanly when the job is asked to leave: SIGTERM (preemption, `scancel`, the kill at a
SLURM time limit) or SIGUSR1 (SLURM's `--signal=USR1@N` warning before the limit).

The signal handler only raises a flag: a handler runs between two bytecodes of whatever the process is doing,
possibly in the middle of an optimizer step, so nothing is saved there. At the end of the next training batch
that completes an optimizer step, the ranks agree whether any of them was signalled (a signal may reach only
rank 0, e.g. with Lightning's DDP launcher), and if so every rank calls `trainer.save_checkpoint` (rank 0 writes
the file, atomically through Lightning's fsspec transaction) and sets `trainer.should_stop`, so `fit` ends the
normal way and the process exits with status 0. A restart with `ckpt_path=auto` resumes from that file, the
newest complete checkpoint (modules/runtime/checkpoint_discovery.py).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On one of `signals`, save `<dirpath>/<filename>.ckpt` at the next optimizer-step boundary and stop.

    The handlers are installed when training starts, replacing Lightning's own SIGTERM handler (which stops
    with a `SIGTERMException` and no checkpoint) and, under `SLURMEnvironment(auto_requeue=True)`, its SIGUSR1
    handler (which saves from inside the handler, mid-step, and requeues); the previous handlers are restored
    when training ends. Requeueing belongs to the launcher (submitit requeues a job whose time ran out).

    Args:
        dirpath: checkpoint directory; None takes the ModelCheckpoint callback's `dirpath`, else
            `<trainer.default_root_dir>/checkpoints`.
        filename: file name without `.ckpt`; the file is overwritten by each preemption.
        signals: names of the signals that request the checkpoint, e.g. ["SIGTERM", "SIGUSR1"].
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "preempted",
        signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGUSR1"),
    ) -> None:
        unknown = [
            name for name in signals if not isinstance(getattr(signal, str(name), None), signal.Signals)
        ]
        if unknown:
            raise ValueError(
                f"unknown signal names {unknown} <callbacks.preemption_checkpoint.signals>; "
                "use names such as SIGTERM, SIGUSR1"
            )
        self.dirpath = dirpath
        self.filename = filename
        self.signals = [signal.Signals[name] for name in signals]
        self.received: signal.Signals | None = None
        self.saved_path: Path | None = None
        self._previous_handlers: dict[signal.Signals, Any] = {}

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Where the preemption checkpoint goes."""
        if self.dirpath is not None:
            directory = Path(self.dirpath)
        else:
            model_checkpoints = [
                cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath
            ]
            directory = (
                Path(model_checkpoints[0].dirpath)
                if model_checkpoints
                else Path(trainer.default_root_dir) / "checkpoints"
            )
        return directory / f"{self.filename}.ckpt"

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # no logging here: a handler may interrupt a logging call that holds the handler's lock
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        self.saved_path = None
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "training runs outside the main thread: signals cannot be handled <callbacks.preemption_checkpoint>"
            )
            return
        for signum in self.signals:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        completes_step = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not (completes_step or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            return
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        self.saved_path = path
        reason = self.received.name if self.received is not None else "a signal on another rank"
        log.warning(
            "%s: saved %s at step %d and stopping; restart with ckpt_path=auto to resume "
            "<callbacks.preemption_checkpoint>",
            reason,
            path,
            trainer.global_step,
        )

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
