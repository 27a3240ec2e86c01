"""Preemption: SIGTERM / SIGUSR1 make training save `checkpoints/preempted.ckpt` at the next batch boundary
and exit with status 0; `ckpt_path=auto` then resumes from that step.

The end-to-end test (a real `train.py` child process killed with SIGTERM, then restarted) is marked slow; the
in-process SIGUSR1 test covers the callback itself in the fast suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from callbacks.preemption_checkpoint import PreemptionCheckpoint
from tests.helpers.train_runs import (
    REPO_ROOT,
    TINY,
    child_env,
    load_checkpoint,
    read_records,
    recorder_overrides,
    run_train,
    toy_data_dir,
)

LONG_RUN = [
    "trainer.max_steps=1000",
    "callbacks.model_checkpoint.every_n_train_steps=1000",
    "model.lr_scheduler.total_steps=1000",  # the resume below changes max_steps, not the cosine schedule
]


def _wait_for_batches(records: Path, count: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"train.py exited early with status {process.returncode}")
        if len([r for r in read_records(records) if r["event"] == "batch"]) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"train.py did not train {count} batches within {timeout} s")


@pytest.mark.slow  # two train.py processes: ~30 s on an idle 2-core machine
def test_sigterm_saves_exits_cleanly_and_auto_resumes(tmp_path, tmp_path_factory):
    data_dir = toy_data_dir(tmp_path_factory)
    run_dir = tmp_path / "run"
    records = tmp_path / "records"
    command = [
        sys.executable,
        "train.py",
        *TINY,
        *LONG_RUN,
        *recorder_overrides(records),
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_batches(records, 3, process, timeout=120)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]

    checkpoint = run_dir / "checkpoints" / "preempted.ckpt"
    stopped_at = load_checkpoint(checkpoint)["global_step"]
    assert stopped_at >= 3
    assert f"SIGTERM: saved {checkpoint} at step {stopped_at} and stopping" in output
    assert max(r["step"] for r in read_records(records) if r["event"] == "batch") == stopped_at

    resumed = run_train(
        [*recorder_overrides(records), f"trainer.max_steps={stopped_at + 2}", "ckpt_path=auto"],
        run_dir,
        data_dir,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # preempted.ckpt, or last.ckpt of the same step that ModelCheckpoint(save_last=True) writes when fit ends
    assert f"resuming from {run_dir / 'checkpoints'}/" in resumed.stdout + resumed.stderr
    starts = [r["step"] for r in read_records(records) if r["event"] == "start"]
    assert starts == [0, stopped_at]
    assert read_records(records)[-1]["step"] == stopped_at + 2


class SignalAtStep(L.Callback):
    """Sends `signum` to this process when training reaches `step`."""

    def __init__(self, signum: signal.Signals, step: int) -> None:
        self.signum = signum
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigusr1_in_process_saves_at_the_batch_boundary_and_restores_handlers(tmp_path, tmp_path_factory):
    from hydra.utils import instantiate

    from tests.helpers.train_runs import compose_tiny

    cfg = compose_tiny(
        tmp_path, toy_data_dir(tmp_path_factory), ["trainer.max_steps=50", "trainer.limit_val_batches=0"]
    )
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    preemption = PreemptionCheckpoint(dirpath=str(tmp_path / "ckpts"), filename="preempted")
    trainer = instantiate(
        cfg.trainer,
        callbacks=[SignalAtStep(signal.SIGUSR1, 2), preemption],
        logger=False,
        enable_checkpointing=False,
    )
    before = signal.getsignal(signal.SIGUSR1)
    trainer.fit(model, datamodule=datamodule)

    # the signal arrived before batch 3 (global step 2); that batch finished, was saved, and training stopped
    assert trainer.global_step == 3
    assert preemption.saved_path == tmp_path / "ckpts" / "preempted.ckpt"
    assert load_checkpoint(preemption.saved_path)["global_step"] == 3
    assert not trainer.interrupted
    assert signal.getsignal(signal.SIGUSR1) is before


def test_unknown_signal_name_is_rejected():
    with pytest.raises(ValueError, match="SIGNOPE"):
        PreemptionCheckpoint(signals=["SIGTERM", "SIGNOPE"])
