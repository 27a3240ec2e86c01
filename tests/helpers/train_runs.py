"""Run `train.py` on tiny toy settings, in this process or as a child process, and record what it trained on.

Tiny overrides, one toy data set per test session, a callback recording every training batch, a `train.py`
subprocess runner, and bitwise comparison of checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from tests.conftest import REPO_ROOT, compose_config

# 4-frame 16x16 clips, batches of 2, 3 batches per epoch; 16 toy training videos in 4 shards of 4, 32 frames
# each (long enough for the paper SCVideo's stride 8). Every test passes the same toy_shards settings, so the
# session's toy data directory is generated once and shared.
TOY_SHARDS = [
    "data.toy_shards.train_samples=16",
    "data.toy_shards.val_samples=4",
    "data.toy_shards.samples_per_shard=4",
    "data.toy_shards.num_frames=32",
    "data.toy_shards.size=32",
]
TINY = [
    *TOY_SHARDS,
    "data.batch_size=2",
    "data.num_frames=4",
    "resolution.height=16",
    "resolution.width=16",
    "data.num_workers=0",
    "data.samples_per_epoch=6",
    "data.val_samples=4",
    "data.shuffle_buffer=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.video_samples.every_n_steps=0",
    "logger=csv",
    "validate=false",
]
RECORDER = "tests.helpers.train_runs.BatchRecorder"


def toy_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`paths.data_dir` shared by every reliability test of the session (train.py generates the toy shards
    there on first use; later runs find them complete)."""
    return tmp_path_factory.getbasetemp() / "reliability_data"


class BatchRecorder(L.Callback):
    """Test probe: appends one JSON line per training batch (rank, step, epoch, sample keys, loss) and one per
    training start to `<directory>/rank<R>.jsonl`."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def _write(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"rank{trainer.global_rank}.jsonl", "a") as stream:
            stream.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, {"event": "start", "step": trainer.global_step, "epoch": trainer.current_epoch})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = {
            "event": "batch",
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "keys": list(batch["key"]),
            "loss": float(outputs["loss"]),
        }
        self._write(trainer, record)


def read_records(directory: Path, rank: int = 0) -> list[dict[str, Any]]:
    path = directory / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def recorder_overrides(directory: Path) -> list[str]:
    return [f"+callbacks.recorder._target_={RECORDER}", f"+callbacks.recorder.directory={directory}"]


def compose_tiny(tmp_path: Path, data_dir: Path, overrides: Sequence[str]):
    """The train config with the tiny overrides, paths under `tmp_path`, the shared toy data in `data_dir`."""
    cfg = compose_config("train", [*TINY, *overrides], tmp_path)
    cfg.paths.data_dir = str(data_dir)
    return cfg


def train_command(args: Sequence[str], data_dir: Path, log_dir: Path) -> list[str]:
    """`python train.py` with the tiny overrides, the shared toy data and runs under `log_dir`."""
    return [
        sys.executable,
        "train.py",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
        *args,
    ]


def run_train(
    args: Sequence[str], run_dir: Path, data_dir: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess:
    """`python train.py` with the tiny overrides in a child process writing to `run_dir`, one thread per process."""
    command = train_command([f"hydra.run.dir={run_dir}", *args], data_dir, run_dir.parent / "logs")
    return run_command(command, timeout)


def run_command(command: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run an entry point from the repository root with `child_env`, capturing its output."""
    return subprocess.run(
        list(command), cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout
    )


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HYDRA_FULL_ERROR": "0"}


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(actual: Any, expected: Any, where: str) -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{where}: keys differ"
        for key in expected:
            assert_same_tensors(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: lengths differ"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_tensors(a, e, f"{where}[{index}]")
    elif torch.is_tensor(expected):
        assert torch.equal(actual, expected), f"{where}: tensors differ"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def train_checkpoint(run_dir: Path, data_dir: Path, overrides: Sequence[str], steps: int = 1) -> Path:
    """Train the tiny config with `overrides` for `steps` steps in this process, writing the run into `run_dir`
    (e.g. `<log_dir>/train/runs/<name>`, where `ckpt_path=latest` looks); returns the last step's checkpoint."""
    from train import train

    every_step = ["callbacks.model_checkpoint.every_n_train_steps=1", "trainer.limit_val_batches=0"]
    cfg = compose_tiny(run_dir, data_dir, [*every_step, *overrides, f"trainer.max_steps={steps}"])
    cfg.paths.output_dir = str(run_dir)
    train(cfg)
    return run_dir / "checkpoints" / f"step{steps:08d}.ckpt"
