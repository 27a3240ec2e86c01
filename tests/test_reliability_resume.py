"""Exact resume: N steps, checkpoint, restart, M more steps equals an uninterrupted N + M run, bitwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.train_runs import (
    TOY_SHARDS,
    assert_same_tensors,
    compose_tiny,
    load_checkpoint,
    read_records,
    recorder_overrides,
    toy_data_dir,
)

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
