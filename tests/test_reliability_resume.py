"""Exact resume: N steps, checkpoint, restart, M more steps equals an uninterrupted N + M run, bitwise.

Also home of the helpers the other reliability and distributed tests share: tiny overrides, one toy data set
per session, a callback recording what every training batch saw, and a `train.py` subprocess runner.
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
RECORDER = "tests.test_reliability_resume.BatchRecorder"


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


def run_train(
    args: Sequence[str], run_dir: Path, data_dir: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess:
    """`python train.py` with the tiny overrides in a child process, one thread per process."""
    command = [
        sys.executable,
        "train.py",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={run_dir.parent / 'logs'}",
        f"hydra.run.dir={run_dir}",
        *args,
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout
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


# ---- exact resume ------------------------------------------------------------------------------------------
TOTAL_STEPS = 4
RESUME = [
    # the cosine schedule's length must not depend on where a segment stops
    f"model.lr_scheduler.total_steps={TOTAL_STEPS}",
    "model.lr_scheduler.warmup_steps=2",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "callbacks.model_checkpoint.save_last=false",
]


def _fit(tmp_path: Path, data_dir: Path, max_steps: int, ckpt_path: Path | None = None) -> Path:
    """Train to `max_steps` (from `ckpt_path` if given); returns the checkpoint directory."""
    from train import train

    overrides = [*RESUME, f"trainer.max_steps={max_steps}", *recorder_overrides(tmp_path / "records")]
    cfg = compose_tiny(tmp_path, data_dir, overrides)
    cfg.ckpt_path = None if ckpt_path is None else str(ckpt_path)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints"


def _batches(directory: Path) -> list[dict[str, Any]]:
    return [record for record in read_records(directory) if record["event"] == "batch"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of TOTAL_STEPS steps (3 batches per epoch, validation after the first epoch)."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    _fit(tmp_path, toy_data_dir(tmp_path_factory), TOTAL_STEPS)
    return tmp_path


def _assert_same_checkpoint(resumed: dict[str, Any], expected: dict[str, Any], step: int) -> None:
    assert resumed["global_step"] == expected["global_step"] == step
    assert resumed["epoch"] == expected["epoch"]
    # weights, EMA shadows (the `ema.*` buffers), the EMA update count and the non-finite counter
    assert any(key.startswith("ema.") for key in expected["state_dict"])
    assert_same_tensors(resumed["state_dict"], expected["state_dict"], "state_dict")
    assert_same_tensors(resumed["optimizer_states"], expected["optimizer_states"], "optimizer_states")
    assert_same_tensors(resumed["lr_schedulers"], expected["lr_schedulers"], "lr_schedulers")
    assert resumed["training_seed"] == expected["training_seed"]
    assert resumed["VideoDataModule"] == expected["VideoDataModule"] == {"train_batches_consumed": step}
    progress = "epoch_loop.batch_progress"
    assert resumed["loops"]["fit_loop"][progress] == expected["loops"]["fit_loop"][progress]


def test_twice_interrupted_run_is_bitwise_identical_to_an_uninterrupted_run(
    uninterrupted, tmp_path, tmp_path_factory
):
    """Stop after step 2 (mid-epoch), resume to step 3 (the end of epoch 0), resume to step 4."""
    data_dir = toy_data_dir(tmp_path_factory)
    first = _fit(tmp_path / "first", data_dir, 2)
    second = _fit(tmp_path / "second", data_dir, 3, ckpt_path=first / "step00000002.ckpt")
    third = _fit(tmp_path / "third", data_dir, TOTAL_STEPS, ckpt_path=second / "step00000003.ckpt")

    reference_dir = uninterrupted / "output" / "checkpoints"
    for step, directory in ((2, first), (3, second), (TOTAL_STEPS, third)):
        expected = load_checkpoint(reference_dir / f"step{step:08d}.ckpt")
        _assert_same_checkpoint(load_checkpoint(directory / f"step{step:08d}.ckpt"), expected, step)

    # each segment starts where the previous stopped and sees the uninterrupted run's samples with the same
    # losses (the same timesteps and noise: the training RNG), across the epoch boundary
    reference = _batches(uninterrupted / "records")
    assert [r["epoch"] for r in reference] == [0, 0, 0, 1]
    assert {key for r in reference[:3] for key in r["keys"]} != {
        key for r in reference[3:] for key in r["keys"]
    }
    segments = [(tmp_path / "first", 0, 2), (tmp_path / "second", 2, 3), (tmp_path / "third", 3, TOTAL_STEPS)]
    for directory, start, stop in segments:
        records = read_records(directory / "records")
        assert records[0] == {"event": "start", "step": start, "epoch": reference[start]["epoch"]}
        got = [(r["step"], r["epoch"], r["keys"], r["loss"]) for r in _batches(directory / "records")]
        want = [(r["step"], r["epoch"], r["keys"], r["loss"]) for r in reference[start:stop]]
        assert got == want


def _epochs(stream, epochs: int) -> list[list[tuple[list[str], torch.Tensor]]]:
    from torch.utils.data import DataLoader

    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=stream.num_workers, drop_last=True)
    return [[(batch["key"], batch["video"]) for batch in loader] for _ in range(epochs)]


@pytest.mark.parametrize("consumed", [1, 4])
def test_stream_with_workers_continues_after_consumed_batches(tmp_path_factory, consumed):
    """Two dataloader workers take batches in turn; after a restart each replays its share of the consumed ones."""
    from datamodules.frame_selection import FrameSelection
    from datamodules.tar_samples import expand_shard_urls
    from datamodules.toy_shapes import ShapesShardSet
    from datamodules.video_clip_stream import VideoClipStream

    root = toy_data_dir(tmp_path_factory) / "shapes"
    settings = {item.split("=")[0].rsplit(".", 1)[1]: int(item.split("=")[1]) for item in TOY_SHARDS}
    ShapesShardSet(root=str(root), **settings).generate()

    def stream() -> VideoClipStream:
        urls = expand_shard_urls(str(root / "train"), "data.train_urls")
        selection = FrameSelection(4, frame_stride=1, target_fps=None)
        return VideoClipStream(
            urls,
            selection,
            height=16,
            width=16,
            num_samples=16,
            batch_size=2,
            num_workers=2,
            shuffle_buffer=4,
            seed=3,
        )

    uninterrupted = stream()
    uninterrupted.set_epoch(0)
    expected = _epochs(uninterrupted, 2)
    resumed = stream()
    resumed.set_epoch(0, consumed_batches=consumed)
    got = _epochs(resumed, 2)
    assert len(got[0]) == 8 - consumed and len(got[1]) == 8
    for (keys, video), (want_keys, want_video) in zip(
        got[0] + got[1], expected[0][consumed:] + expected[1], strict=True
    ):
        assert keys == want_keys
        assert torch.equal(video, want_video)
    with pytest.raises(ValueError, match="consumed_batches=8 is outside the 8 batches"):
        resumed.set_epoch(0, consumed_batches=8)
