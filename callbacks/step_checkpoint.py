"""ModelCheckpoint that keeps the newest step checkpoints plus milestones, and saves the weights a run ends with.

Retention. A paper run writes a step checkpoint every `every_n_train_steps` (500): 516 files of ~20 GB for ART-V's
258K steps. With `keep_last: N` only the N newest step checkpoints stay, plus, with `keep_every_n_steps: M`, every
one whose step is a multiple of M (milestones, kept for good). An older checkpoint is deleted only after the newer
one is completely written (`trainer.save_checkpoint` returns after every rank wrote its part), on rank 0 through the
strategy's `remove_checkpoint`, which deletes files and sharded FSDP checkpoint directories (`step00000500.ckpt/`)
alike. `last.ckpt` and the preemption checkpoint (callbacks/preemption_checkpoint.py) are never deleted, nor is the
checkpoint the run resumed from, or anything outside `dirpath` (Lightning's rules for its own `save_top_k`).

The callback deletes only step checkpoints it has recorded writing: the record (step and path, oldest first) is part
of its state in every checkpoint, so a resumed run continues the record of the checkpoint it resumed from, in the
order they were written. The one file that can be written after that checkpoint and still belong to it is the step
checkpoint of the step it holds (a preemption checkpoint is saved just before the periodic one of the same step):
a resumed run adds it to the record. Files the record does not list are never deleted: those of a run resumed from
an older checkpoint after newer ones were written (a branch), or written before retention was switched on.

Last checkpoint. Lightning's ModelCheckpoint writes `last.ckpt` at train end only if it never wrote one before, so a
run stopped by `trainer.max_time` (the toy runs' 15-minute budget), or by a `max_steps` that is not a multiple of
`every_n_train_steps`, silently loses every step after its last periodic save: up to `every_n_train_steps - 1`
steps of training, and `sample.py` / `eval.py` then load the older weights.

The final `last.ckpt` is written at the end of the run's last batch, where the periodic checkpoints are written too,
so that resuming from it continues exactly: a stop is known there (`trainer.should_stop`, set by the time limit or
a preemption signal in their own batch-end hooks, which Lightning runs before any ModelCheckpoint's; or `max_steps`
reached). A checkpoint written later, in `on_train_end`, records the loops after they ended and resumes a step off;
it is the fallback for stops a batch end cannot see.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

log = logging.getLogger(__name__)

CONFIG_KEY = "callbacks.model_checkpoint"


@dataclass(frozen=True)
class StepFile:
    """A step checkpoint on disk: the global step it holds and its path (a file, or a sharded directory)."""

    step: int
    path: str


def retained(
    steps: Sequence[int], keep_last: int | None, keep_every_n_steps: int | None = None
) -> list[bool]:
    """Which of the step checkpoints written at `steps` (oldest first) to keep: the `keep_last` newest (all when
    None) and those whose step is a positive multiple of `keep_every_n_steps`."""
    newest = len(steps) if keep_last is None else keep_last
    return [
        index >= len(steps) - newest
        or (keep_every_n_steps is not None and step > 0 and step % keep_every_n_steps == 0)
        for index, step in enumerate(steps)
    ]


def _check_count(key: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{CONFIG_KEY}.{key}={value!r} must be a positive integer or null")


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments) whose `last.ckpt` always holds the final step when training ends, and which
    keeps only the newest step checkpoints and milestones (see the module docstring).

    Args:
        keep_last: how many of the newest step checkpoints to keep; None keeps all. Needs `save_top_k=-1` and no
            `monitor` (retention is by age, Lightning's top-k by a metric).
        keep_every_n_steps: also keep every step checkpoint whose step is a multiple of this (a multiple of
            `every_n_train_steps` when that is set); None for no milestones.
        args, kwargs: `ModelCheckpoint`'s.
    """

    def __init__(
        self, *args: Any, keep_last: int | None = None, keep_every_n_steps: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_count("keep_last", keep_last)
        _check_count("keep_every_n_steps", keep_every_n_steps)
        if keep_last is not None and (self.save_top_k != -1 or self.monitor is not None):
            raise ValueError(
                f"{CONFIG_KEY}.keep_last={keep_last} keeps the newest step checkpoints and needs save_top_k=-1 and "
                f"monitor=null (got save_top_k={self.save_top_k}, monitor={self.monitor!r})"
            )
        every = self._every_n_train_steps
        if keep_every_n_steps is not None and every >= 1 and keep_every_n_steps % every:
            raise ValueError(
                f"{CONFIG_KEY}.keep_every_n_steps={keep_every_n_steps} must be a multiple of every_n_train_steps="
                f"{every}, or most milestones fall between two step checkpoints"
            )
        self.keep_last = keep_last
        self.keep_every_n_steps = keep_every_n_steps
        self.step_files: list[StepFile] = []

    # ---- retention ----------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On resume, add the step checkpoint of the resumed step to the record if it exists and is missing."""
        super().on_train_start(trainer, pl_module)
        if self.keep_last is None or trainer.global_step == 0:
            return
        path = self.format_checkpoint_name(self._monitor_candidates(trainer))
        if path in {file.path for file in self.step_files} or not self.file_exists(path, trainer):
            return
        self.step_files.append(StepFile(trainer.global_step, path))
        if trainer.is_global_zero:
            log.info(
                "resuming at step %d: %s joins the step checkpoints kept by age", trainer.global_step, path
            )

    @override
    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Save, then delete the step checkpoints retention no longer keeps (rank 0 deletes, after every rank saved).
        The record saved with the checkpoint is the one after this deletion."""
        if self.keep_last is None or filepath == self.last_model_path:
            super()._save_checkpoint(trainer, filepath)
            return
        written = [file for file in self.step_files if file.path != filepath]
        written.append(StepFile(trainer.global_step, filepath))
        keep = retained([file.step for file in written], self.keep_last, self.keep_every_n_steps)
        # the resumed-from checkpoint and anything outside dirpath stay, and stay on the record
        removed = [
            file
            for file, kept in zip(written, keep, strict=True)
            if not kept and self._should_remove_checkpoint(trainer, file.path, filepath)
        ]
        self.step_files = [file for file in written if file not in removed]
        super()._save_checkpoint(trainer, filepath)
        for file in removed:
            self._remove_checkpoint(trainer, file.path)
        if removed and trainer.is_global_zero:
            log.info(
                "deleted %d old step checkpoints (%s) <%s.keep_last=%d, keep_every_n_steps=%s>",
                len(removed),
                ", ".join(file.path for file in removed),
                CONFIG_KEY,
                self.keep_last,
                self.keep_every_n_steps,
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["step_files"] = [{"step": file.step, "path": file.path} for file in self.step_files]
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # as Lightning's own paths: a record of another directory is not this run's to prune
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.step_files = [
                StepFile(int(item["step"]), str(item["path"])) for item in state_dict.get("step_files", [])
            ]

    # ---- last checkpoint ----------------------------------------------------------------------------
    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        run_ends = trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step
        if run_ends and self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            log.info("training stops at step %d: saved %s", trainer.global_step, self.last_model_path)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or trainer.global_step == self._last_global_step_saved:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        log.info("training ended at step %d: saved %s", trainer.global_step, self.last_model_path)
