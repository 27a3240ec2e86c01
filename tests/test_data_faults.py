"""Fault injection: corrupt, too-short, caption-less and zero-byte videos, and broken shards, are skipped,
counted per reason and logged with their key; `skip_corrupt=False` raises instead. The whole fault corpus
over workers and ranks: tests/test_data_exact_validation.py."""

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils.data import DataLoader

from datamodules.frame_selection import FrameSelection
from datamodules.video_clip_stream import VideoClipStream
from datamodules.video_datamodule import VideoDataModule
from tests.helpers.data_shards import cut_shard_in_member, index_video, sample_members, write_raw_shard

SELECTION = FrameSelection(4, frame_stride=2)
GOOD = index_video(16, height=32, width=32)
FAULTS = {
    "corrupt": ("000000001", b"\x00\x01garbage" * 64, "a caption"),
    "too_short": ("000000002", index_video(5, height=32, width=32), "a caption"),
    "missing_caption": ("000000003", GOOD, None),
    "empty": ("000000004", b"", "a caption"),
}


def make_stream(urls: list[str], **overrides) -> VideoClipStream:
    options = {"height": 16, "width": 16, "num_samples": None, "batch_size": 2, "training": False}
    options.update(overrides)
    return VideoClipStream(urls, SELECTION, **options)


def shard_with(tmp_path: Path, reasons: list[str]) -> str:
    members = sample_members("000000000", GOOD, "good one")
    for reason in reasons:
        members += sample_members(*FAULTS[reason])
    members += sample_members("000000009", GOOD, "good two")
    return str(write_raw_shard(tmp_path / "00000.tar", members))


def valid_keys(stream: VideoClipStream, num_workers: int = 0) -> list[str]:
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=num_workers)
    return [key for batch in loader for key, valid in zip(batch["key"], batch["valid"], strict=True) if valid]


@pytest.mark.parametrize("reason", list(FAULTS))
def test_each_fault_is_skipped_counted_and_logged(tmp_path: Path, caplog, reason: str):
    stream = make_stream([shard_with(tmp_path, [reason])])
    with caplog.at_level(logging.WARNING, logger="datamodules.video_clip_stream"):
        assert valid_keys(stream) == ["000000000", "000000009"]
    counts = stream.skip_counts()
    assert counts[reason] == 1
    assert sum(counts.values()) == 1
    key = FAULTS[reason][0]
    (message,) = [record.getMessage() for record in caplog.records if key in record.getMessage()]
    assert message.startswith("skipping ")
    expected_config = (
        "data.num_frames=4, data.frame_stride=2" if reason == "too_short" else "data.skip_corrupt=true"
    )
    assert message.endswith(f"<{expected_config}>")


def test_all_faults_in_one_shard_are_counted_separately(tmp_path: Path):
    stream = make_stream([shard_with(tmp_path, list(FAULTS))])
    assert valid_keys(stream) == ["000000000", "000000009"]
    assert {reason: count for reason, count in stream.skip_counts().items() if count} == dict.fromkeys(
        FAULTS, 1
    )


def test_skip_counts_add_up_over_dataloader_workers(tmp_path: Path):
    urls = []
    for shard in range(2):
        members = sample_members(f"{shard:05d}0000", b"", "zero bytes")
        members += sample_members(f"{shard:05d}0001", GOOD, "good")
        urls.append(str(write_raw_shard(tmp_path / f"{shard:05d}.tar", members)))
    stream = make_stream(urls, batch_size=1, num_workers=2)
    assert sorted(valid_keys(stream, num_workers=2)) == ["000000001", "000010001"]
    assert stream.skip_counts()["empty"] == 2


def test_truncated_shard_counts_the_sample_it_cut_off(tmp_path: Path):
    path = cut_shard_in_member(Path(shard_with(tmp_path, [])), "000000009.mp4")
    stream = make_stream([str(path)], batch_size=1)
    assert valid_keys(stream) == ["000000000"]
    assert stream.skip_counts()["unreadable_shard"] == 1


def test_a_broken_training_shard_is_counted_by_one_rank_only(tmp_path: Path):
    members = []
    for position in range(4):
        members += sample_members(f"0000{position:05d}", GOOD, "good")
    path = write_raw_shard(tmp_path / "00000.tar", members + sample_members("000000004", GOOD, "cut"))
    cut_shard_in_member(path, "000000004.mp4")
    # one shard, two ranks: both read all of it and keep every other sample; the cut-off sample 4 is rank 0's
    counts = []
    for rank in range(2):
        stream = make_stream([str(path)], training=True, num_samples=8, rank=rank, world_size=2)
        assert len(list(DataLoader(stream, batch_size=2))) == 2
        counts.append(stream.skip_counts()["unreadable_shard"])
    assert counts == [1, 0]


def test_skip_corrupt_false_raises_naming_the_key(tmp_path: Path):
    stream = make_stream([shard_with(tmp_path, ["corrupt"])], skip_corrupt=False)
    with pytest.raises(ValueError, match=r"corrupt video 000000001 .*data\.skip_corrupt=true"):
        list(stream)


def test_a_training_pass_without_any_usable_sample_raises(tmp_path: Path):
    members = sample_members(*FAULTS["empty"]) + sample_members(*FAULTS["too_short"])
    stream = make_stream(
        [str(write_raw_shard(tmp_path / "00000.tar", members))], training=True, num_samples=2
    )
    with pytest.raises(RuntimeError, match="no usable sample"):
        list(stream)


def test_datamodule_reports_skips_per_rank(tmp_path: Path, caplog):
    datamodule = VideoDataModule(
        train_urls=shard_with(tmp_path, ["empty", "missing_caption"]),
        val_urls=None,
        batch_size=2,
        num_workers=0,
        num_frames=4,
        frame_stride=2,
        target_fps=None,
        height=16,
        width=16,
        samples_per_epoch=4,
        val_samples=2,
        shuffle_buffer=0,
        seed=0,
        pin_memory=False,
    )
    # the rank comes from the trainer when torch.distributed is not initialised
    datamodule.trainer = SimpleNamespace(global_rank=1, world_size=2, current_epoch=0)
    datamodule.setup("fit")
    assert (datamodule.train_dataset.rank, datamodule.train_dataset.world_size) == (1, 2)
    assert len(list(datamodule.train_dataloader())) == 1
    assert datamodule.val_dataloader() == []
    with caplog.at_level(logging.WARNING, logger="datamodules.video_datamodule"):
        datamodule.teardown("fit")
    # one shard, two ranks: rank 1 keeps samples 1 and 3 (the zero-byte video and "good two") and reads
    # the shard twice to fill its batch of 2: two passes, two readings of the faulty sample
    assert datamodule.skip_counts()["train"]["empty"] == 2
    assert (
        "skipped 2 readings of faulty training samples on rank 1: {'empty': 2} <data.skip_corrupt=true>"
        in caplog.text
    )
