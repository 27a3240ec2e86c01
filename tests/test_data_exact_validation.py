"""A validation pass over a real-world-like corpus (tests/helpers/fault_corpus.py) with any number of dataloader
workers and DDP ranks (simulated by building each rank's stream with its rank): every usable sample exactly once,
with the centred clip's exact source frames; every faulty one counted once with its reason, logged once with its
key and videoid; every rank the same number of batches, the padding marked and left out of val/loss."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.clip_batches import unit_range_video
from datamodules.frame_selection import FrameSelection
from datamodules.video_clip_stream import VideoClipStream
from datamodules.video_datamodule import VideoDataModule
from modules.training.video_diffusion_module import VideoDiffusionModule
from tests.helpers.data_shards import index_video, read_frame_index, sample_members, write_raw_shard
from tests.helpers.fault_corpus import FaultCorpus, write_fault_corpus

SELECTION = FrameSelection(4, frame_stride=2)
BATCH_SIZE = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> FaultCorpus:
    return write_fault_corpus(tmp_path_factory.mktemp("fault_corpus"))


def val_stream(urls: list[str], **overrides) -> VideoClipStream:
    options = {"height": 16, "width": 16, "num_samples": None, "batch_size": BATCH_SIZE, "training": False}
    options.update(overrides)
    return VideoClipStream(urls, SELECTION, **options)


def loader(stream: VideoClipStream) -> DataLoader:
    workers = stream.num_workers
    return DataLoader(
        stream, batch_size=stream.batch_size, num_workers=workers, persistent_workers=workers > 0
    )


def valid_keys(batches: list[dict]) -> list[str]:
    return [
        key for batch in batches for key, valid in zip(batch["key"], batch["valid"], strict=True) if valid
    ]


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("num_workers", [2, 3])
def test_every_usable_sample_once_and_every_fault_counted_once(corpus: FaultCorpus, world_size, num_workers):
    streams = [
        val_stream(corpus.urls, rank=rank, world_size=world_size, num_workers=num_workers)
        for rank in range(world_size)
    ]
    loaders = [loader(stream) for stream in streams]
    passes = []
    for _ in range(2):  # persistent workers: the second pass must equal the first, counters included
        per_rank = [list(rank_loader) for rank_loader in loaders]
        skips = sum((Counter(stream.skip_counts()) for stream in streams), Counter())
        passes.append((per_rank, skips))
    for per_rank, skips in passes:
        # every rank runs the same number of batches, the number its loader announces
        assert {len(batches) for batches in per_rank} == {len(loaders[0])}
        keys = [key for batches in per_rank for key in valid_keys(batches)]
        assert Counter(keys) == Counter(list(corpus.good))
        assert skips == Counter(corpus.bad.values())
    assert [valid_keys(batches) for batches in passes[0][0]] == [
        valid_keys(batches) for batches in passes[1][0]
    ]
    for batch in (batch for batches in passes[0][0] for batch in batches):
        for video, key, valid in zip(batch["video"], batch["key"], batch["valid"], strict=True):
            if not valid:
                assert key == "" and not video.any()
                continue
            good = corpus.good[key]
            expected = SELECTION.indices(good.num_frames, good.fps, None)
            assert [read_frame_index(frame) for frame in video] == expected, f"{key} ({good})"


def test_skips_are_logged_once_with_key_videoid_and_reason(corpus: FaultCorpus, caplog):
    stream = val_stream(corpus.urls)
    with caplog.at_level(logging.WARNING, logger="datamodules.video_clip_stream"):
        for _ in range(2):
            list(loader(stream))
    skip_lines = [
        record.getMessage() for record in caplog.records if record.getMessage().startswith("skipping")
    ]
    assert len(skip_lines) == len(corpus.bad)  # the second pass logs nothing again
    for key, reason in corpus.bad.items():
        (line,) = [line for line in skip_lines if f" {key}" in line]
        assert f"({reason} #" in line
        if key in corpus.videoids and reason != "unreadable_shard":  # the cut-off sample's metadata is lost
            assert f"{key} (videoid {corpus.videoids[key]})" in line


def small_and_large_shards(directory: Path) -> list[str]:
    """One shard of 1 usable sample and one of 7 (the user's report)."""
    video = index_video(16, height=32, width=32)
    urls = []
    for shard, size in enumerate((1, 7)):
        members = []
        for position in range(size):
            members += sample_members(f"{shard:05d}{position:04d}", video, "a caption")
        urls.append(str(write_raw_shard(directory / f"{shard:05d}.tar", members)))
    return urls


@pytest.mark.parametrize("val_samples", [8, 4, 20])
def test_unequal_shards_with_two_workers_read_the_first_val_samples_once(tmp_path: Path, val_samples):
    urls = small_and_large_shards(tmp_path)
    stream = val_stream(urls, num_samples=val_samples, num_workers=2, batch_size=2)
    keys = valid_keys(list(loader(stream)))
    every_key = ["000000000"] + [f"00001{position:04d}" for position in range(7)]
    assert sorted(keys) == every_key[:val_samples]


def test_val_samples_caps_the_pass_at_the_first_samples_in_shard_order(corpus: FaultCorpus):
    stream = val_stream(corpus.urls, num_samples=5, num_workers=2)
    first_five = ["000000000", "000000003", "000000006", "000010000", "000010003"]
    assert sorted(valid_keys(list(loader(stream)))) == [key for key in first_five if key in corpus.good]
    assert Counter({r: n for r, n in stream.skip_counts().items() if n}) == Counter(
        corpus.bad[key] for key in first_five if key in corpus.bad
    )


class _MeanPixelModule(L.LightningModule):
    """The real `validation_step` with a loss anyone can recompute: the mean pixel of the (float) clips."""

    validation_step = VideoDiffusionModule.validation_step

    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return batch["video"].mean()


def test_val_loss_is_the_mean_over_usable_samples_without_the_padding(corpus: FaultCorpus, tmp_path, caplog):
    datamodule = VideoDataModule(
        train_urls=corpus.urls,
        val_urls=corpus.urls,
        batch_size=BATCH_SIZE,
        num_workers=2,
        num_frames=4,
        frame_stride=2,
        target_fps=None,
        height=16,
        width=16,
        samples_per_epoch=6,
        val_samples=None,
        shuffle_buffer=0,
        seed=0,
        pin_memory=False,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.WARNING, logger="datamodules.video_datamodule"):
        (metrics,) = trainer.validate(_MeanPixelModule(), datamodule=datamodule)
    assert datamodule.val_dataloader().persistent_workers
    # each usable clip's mean pixel in [-1, 1], averaged over the clips; the zero padding (-1) would pull it down
    clip_means = [
        unit_range_video(item["video"]).mean() for item in val_stream(corpus.urls) if bool(item["valid"])
    ]
    assert len(clip_means) == len(corpus.good)
    assert metrics["val/loss"] == pytest.approx(float(torch.stack(clip_means).mean()), abs=1e-6)
    faults = len(corpus.bad)
    assert f"skipped {faults} faulty samples in the last validation pass on rank 0" in caplog.text
