"""Checkpoint files: an interrupted write never replaces the previous good file, and `ckpt_path=auto` reports
a truncated newest checkpoint and resumes from the previous complete one.

Lightning writes every checkpoint through `lightning.fabric.utilities.cloud_io._atomic_save`: `torch.save` into
memory, then an fsspec transaction, which on a local disk writes a temporary file (`tempfile.mkstemp`, in
$TMPDIR) and moves it over the final name on commit, or deletes it when the write raised. The move is an
atomic rename only when $TMPDIR is on the checkpoint's file system; across file systems it is a copy, which
a crash can cut short: that is why `ckpt_path=auto` checks every candidate before trusting it.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import lightning as L
import pytest
from fsspec.implementations.local import LocalFileOpener
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from modules.runtime.checkpoint_discovery import is_complete_checkpoint
from modules.runtime.instantiation import instantiate_callbacks
from tests.helpers.train_runs import (
    compose_tiny,
    load_checkpoint,
    read_records,
    recorder_overrides,
    toy_data_dir,
)

CHECKPOINT_EVERY_STEP = [
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "trainer.limit_val_batches=0",
    "model.lr_scheduler.total_steps=4",  # a resume with a larger max_steps keeps the cosine schedule's length
]


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, tmp_path_factory, monkeypatch):
    cfg = compose_tiny(
        tmp_path, toy_data_dir(tmp_path_factory), [*CHECKPOINT_EVERY_STEP, "trainer.max_steps=3"]
    )
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = [cb for cb in instantiate_callbacks(cfg.callbacks) if isinstance(cb, ModelCheckpoint)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)

    writes: list[tuple[str, bool, str]] = []
    write = LocalFileOpener.write

    def write_half_then_fail(self: LocalFileOpener, data: bytes) -> int:
        writes.append((self.path, self.autocommit, self.temp))
        if not Path(self.path).exists():
            return write(self, data)
        # replacing an existing checkpoint: the disk fills up half-way
        write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileOpener, "write", write_half_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        trainer.fit(model, datamodule=datamodule)

    directory = Path(cfg.paths.output_dir) / "checkpoints"
    # step 1 wrote step00000001.ckpt and last.ckpt; step 2 wrote step00000002.ckpt, then failed replacing last.ckpt
    assert [(Path(path).name, autocommit) for path, autocommit, _ in writes] == [
        ("step00000001.ckpt", False),
        ("last.ckpt", False),
        ("step00000002.ckpt", False),
        ("last.ckpt", False),
    ]
    assert sorted(p.name for p in directory.iterdir()) == [
        "last.ckpt",
        "step00000001.ckpt",
        "step00000002.ckpt",
    ]
    assert is_complete_checkpoint(directory / "last.ckpt")
    assert load_checkpoint(directory / "last.ckpt")["global_step"] == 1
    assert load_checkpoint(directory / "step00000002.ckpt")["global_step"] == 2
    # every write went to a temporary file; the failed one was deleted
    assert all(not Path(temp).exists() for _, _, temp in writes)


def test_auto_resume_skips_a_truncated_newest_checkpoint(tmp_path, tmp_path_factory, caplog):
    from train import train

    data_dir = toy_data_dir(tmp_path_factory)
    records = tmp_path / "records"
    overrides = [*CHECKPOINT_EVERY_STEP, *recorder_overrides(records)]
    train(compose_tiny(tmp_path, data_dir, [*overrides, "trainer.max_steps=2"]))
    directory = tmp_path / "output" / "checkpoints"
    newest = directory / "last.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) * 2 // 3])  # a copy cut short; now the newest file

    caplog.set_level(logging.INFO)
    train(compose_tiny(tmp_path, data_dir, [*overrides, "trainer.max_steps=3", "ckpt_path=auto"]))

    messages = [record.getMessage() for record in caplog.records]
    assert (
        f"checkpoint {newest} is truncated or corrupt; falling back to an older one <ckpt_path=auto>"
        in messages
    )
    assert f"resuming from {directory / 'step00000002.ckpt'} <ckpt_path=auto>" in messages
    starts = [r for r in read_records(records) if r["event"] == "start"]
    assert [r["step"] for r in starts] == [0, 2]
    assert load_checkpoint(directory / "step00000003.ckpt")["global_step"] == 3


def test_last_checkpoint_holds_the_final_step_between_periodic_saves(tmp_path, tmp_path_factory):
    """A run that stops between periodic saves (max_time, or max_steps off the saving grid) keeps its last steps:
    Lightning's own ModelCheckpoint would leave last.ckpt at step 2 here."""
    from train import train

    overrides = ["callbacks.model_checkpoint.every_n_train_steps=2", "trainer.limit_val_batches=0"]
    train(compose_tiny(tmp_path, toy_data_dir(tmp_path_factory), [*overrides, "trainer.max_steps=3"]))
    directory = tmp_path / "output" / "checkpoints"
    assert load_checkpoint(directory / "step00000002.ckpt")["global_step"] == 2
    assert load_checkpoint(directory / "last.ckpt")["global_step"] == 3
    assert not (directory / "step00000003.ckpt").exists()  # the periodic files keep their grid
