"""Shard URLs, rank/worker split, equal batch counts, epochs, batch format, pipe: URLs."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from datamodules import video_clip_stream
from datamodules.clip_batches import unit_range_video
from datamodules.frame_selection import FrameSelection
from datamodules.shard_assignment import (
    ShardPiece,
    WorkerSlot,
    assign_shards,
    batches_for_worker,
    shard_pieces,
    validation_batches_per_worker,
    validation_block,
)
from datamodules.tar_samples import expand_shard_urls, index_shard, iter_tar_samples
from datamodules.video_clip_stream import VideoClipStream
from tests.helpers.data_shards import read_frame_index, write_index_shards

SELECTION = FrameSelection(4, frame_stride=2)


def make_stream(urls, **overrides) -> VideoClipStream:
    options = {"height": 16, "width": 16, "num_samples": 12, "batch_size": 2, "seed": 7}
    options.update(overrides)
    return VideoClipStream(urls, SELECTION, **options)


def batches(stream: VideoClipStream, num_workers: int = 0) -> list[dict]:
    return list(DataLoader(stream, batch_size=stream.batch_size, num_workers=num_workers, drop_last=True))


def keys_of(loaded: list[dict]) -> list[str]:
    return [key for batch in loaded for key in batch["key"]]


def test_expand_urls_braces_directories_and_missing(tmp_path: Path):
    paths = write_index_shards(tmp_path / "shards", num_shards=3, samples_per_shard=1)
    assert expand_shard_urls(str(tmp_path / "shards/{00000..00002}.tar"), "data.train_urls") == paths
    assert expand_shard_urls(str(tmp_path / "shards"), "data.train_urls") == paths
    assert expand_shard_urls([paths[2], paths[0]], "data.train_urls") == [paths[2], paths[0]]
    assert expand_shard_urls("pipe:cat /x/{0..1}.tar", "data.train_urls") == [
        "pipe:cat /x/0.tar",
        "pipe:cat /x/1.tar",
    ]
    with pytest.raises(FileNotFoundError, match=r"data\.val_urls.*00008\.tar"):
        expand_shard_urls(str(tmp_path / "shards/{00008..00009}.tar"), "data.val_urls")
    with pytest.raises(ValueError, match="names no shards"):
        expand_shard_urls(str(tmp_path), "data.train_urls")


def test_pipe_url_reads_the_same_samples_as_the_path(tmp_path: Path):
    (path,) = write_index_shards(tmp_path, num_shards=1, samples_per_shard=3)
    direct = [(sample.key, sample.members) for sample in iter_tar_samples(path)]
    piped = [(sample.key, sample.members) for sample in iter_tar_samples(f"pipe:cat {path}")]
    assert piped == direct
    assert [key for key, _ in direct] == ["000000000", "000000001", "000000002"]
    assert set(direct[0][1]) == {"mp4", "txt", "json"}


def test_stream_from_pipe_url(tmp_path: Path):
    (path,) = write_index_shards(tmp_path, num_shards=1, samples_per_shard=2)
    loaded = batches(make_stream([f"pipe:cat {path}"], num_samples=4))
    assert len(loaded) == 2


@pytest.mark.parametrize(("num_shards", "global_count"), [(8, 4), (10, 4), (3, 6)])
def test_each_pass_gives_every_shard_or_sample_to_exactly_one_process(num_shards, global_count):
    urls = [f"{index:05d}.tar" for index in range(num_shards)]
    samples_per_shard = 5
    owners = Counter()
    for global_index in range(global_count):
        rank, worker = divmod(global_index, 2)
        slot = WorkerSlot(rank=rank, world_size=global_count // 2, worker_id=worker, num_workers=2)
        assignment = assign_shards(urls, slot, order_seed=(0, 1, 2))
        stream = [(url, position) for url in assignment.urls for position in range(samples_per_shard)]
        owners.update(item for index, item in enumerate(stream) if assignment.keeps(index))
    assert len(owners) == num_shards * samples_per_shard
    assert set(owners.values()) == {1}


def test_worker_batches_add_up_to_the_rank_batches():
    for num_samples, batch_size, world_size, num_workers in [(100, 4, 3, 2), (13, 2, 2, 3), (64, 8, 1, 5)]:
        rank_batches = num_samples // world_size // batch_size
        for rank in range(world_size):
            shares = [
                batches_for_worker(num_samples, batch_size, WorkerSlot(rank, world_size, worker, num_workers))
                for worker in range(num_workers)
            ]
            assert sum(shares) == rank_batches
            assert max(shares) - min(shares) <= 1


def test_ranks_get_equal_batch_counts_from_uneven_shards(tmp_path: Path):
    urls = write_index_shards(tmp_path, num_shards=5, samples_per_shard=3)
    counts = []
    keys_by_rank = []
    for rank in range(3):
        stream = make_stream(urls, rank=rank, world_size=3, num_samples=14, shuffle_buffer=4)
        loaded = batches(stream)
        counts.append(len(loaded))
        assert len(stream) == 4
        keys_by_rank.append(set(keys_of(loaded)))
    # 14 samples // 3 ranks // batch 2 = 2 batches on every rank
    assert counts == [2, 2, 2]
    # 5 shards >= 3 ranks: in the first pass no two ranks read the same shard
    assert not keys_by_rank[0] & keys_by_rank[1]
    assert not keys_by_rank[1] & keys_by_rank[2]


def test_batch_format_and_value_range(tmp_path: Path):
    urls = write_index_shards(tmp_path, num_shards=1, samples_per_shard=4)
    (batch, *_) = batches(make_stream(urls, num_samples=4, training=False))
    # uint8 through the loader; float [-1, 1] only after the batch reached its device
    assert batch["video"].shape == (2, 4, 3, 16, 16)
    assert batch["video"].dtype == torch.uint8
    assert batch["valid"].tolist() == [True, True]
    video = unit_range_video(batch["video"])
    assert video.dtype == torch.float32
    assert video.min() == -1.0
    assert video.max() <= 1.0
    assert video.max() > 0.9
    torch.testing.assert_close(video, batch["video"].float() / 127.5 - 1.0, rtol=0, atol=0)
    assert batch["caption"] == ["video 000000000", "video 000000001"]
    assert batch["key"] == ["000000000", "000000001"]
    # the 24-frame source, 4 frames at stride 2, centred: frames 8, 10, 12, 14
    assert [read_frame_index(frame) for frame in batch["video"][0]] == [8, 10, 12, 14]


def test_validation_is_deterministic_and_reads_a_small_set_once(tmp_path: Path):
    urls = write_index_shards(tmp_path, num_shards=1, samples_per_shard=3)
    stream = make_stream(urls, num_samples=8, training=False)
    first, second = batches(stream), batches(stream)
    assert keys_of(first) == keys_of(second) == ["000000000", "000000001", "000000002", ""]
    # val_samples is a cap: 8 > 3 reads the 3 once; the last batch is padded, and the padding is marked
    assert torch.cat([batch["valid"] for batch in first]).tolist() == [True, True, True, False]
    assert not first[-1]["video"][1].any()
    assert len(stream) == 4


def test_training_epochs_read_different_orders(tmp_path: Path):
    urls = write_index_shards(tmp_path, num_shards=4, samples_per_shard=4)
    stream = make_stream(urls, num_samples=8, shuffle_buffer=8)
    epochs = [keys_of(batches(stream)) for _ in range(3)]
    assert len({tuple(keys) for keys in epochs}) == 3
    # a fresh stream with the same seed replays the same first epoch, and set_epoch jumps to any epoch
    assert keys_of(batches(make_stream(urls, num_samples=8, shuffle_buffer=8))) == epochs[0]
    resumed = make_stream(urls, num_samples=8, shuffle_buffer=8)
    resumed.set_epoch(1)
    assert [keys_of(batches(resumed)) for _ in range(2)] == epochs[1:]


def test_dataloader_workers_split_the_stream_and_share_counters(tmp_path: Path):
    urls = write_index_shards(tmp_path / "good", num_shards=4, samples_per_shard=3)
    stream = make_stream(urls, num_samples=10, num_workers=2, training=False)
    loaded = batches(stream, num_workers=2)
    # the first 10 of the 12 samples, 5 a worker: 3 batches of 2 each, the last one padded
    assert len(loaded) == len(stream) // 2 == 6
    keys = [key for batch in loaded for key, valid in zip(batch["key"], batch["valid"], strict=True) if valid]
    assert (
        sorted(keys)
        == sorted(f"{shard:05d}{position:04d}" for shard in range(4) for position in range(3))[:10]
    )
    assert stream.counters.decode_counts()["clips"] == 10


def test_dataloader_with_other_worker_count_than_configured_fails(tmp_path: Path, monkeypatch):
    urls = write_index_shards(tmp_path, num_shards=2, samples_per_shard=2)
    stream = make_stream(urls, num_samples=4, num_workers=1)
    # what a DataLoader worker of a 2-worker loader sees
    monkeypatch.setattr(video_clip_stream, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=2))
    with pytest.raises(ValueError, match=r"data\.num_workers=1"):
        next(iter(stream))


def test_too_few_samples_for_one_batch_per_rank_is_an_error(tmp_path: Path):
    urls = write_index_shards(tmp_path, num_shards=1, samples_per_shard=1)
    with pytest.raises(ValueError, match="at least 8 samples"):
        make_stream(urls, num_samples=7, batch_size=2, world_size=4, rank=0)


@pytest.mark.parametrize("consumed", [0, 3])
def test_persistent_workers_read_the_same_epochs_as_restarted_ones(tmp_path: Path, consumed):
    urls = write_index_shards(tmp_path, num_shards=4, samples_per_shard=3)

    def epochs(persistent: bool) -> list[list[tuple[list[str], torch.Tensor]]]:
        stream = make_stream(urls, num_samples=8, num_workers=2, shuffle_buffer=4)
        stream.set_epoch(0, consumed_batches=consumed)
        loader = DataLoader(
            stream, batch_size=2, num_workers=2, drop_last=True, persistent_workers=persistent
        )
        return [[(batch["key"], batch["video"]) for batch in loader] for _ in range(3)]

    persistent, restarted = epochs(True), epochs(False)
    assert [len(epoch) for epoch in persistent] == [4 - consumed, 4, 4]
    for epoch, want_epoch in zip(persistent, restarted, strict=True):
        for (keys, video), (want_keys, want_video) in zip(epoch, want_epoch, strict=True):
            assert keys == want_keys
            assert torch.equal(video, want_video)
    assert len({tuple(key for keys, _ in epoch for key in keys) for epoch in persistent[1:]}) == 2


@pytest.mark.parametrize("global_count", [1, 2, 3, 5, 8])
def test_validation_blocks_give_every_position_to_one_worker(global_count):
    for num_samples in range(1, 30):
        blocks = [
            validation_block(num_samples, WorkerSlot(0, 1, worker, global_count))
            for worker in range(global_count)
        ]
        assert [position for block in blocks for position in block] == list(range(num_samples))
        # every worker yields the fewest whole batches of 3 that hold the largest block (at least one)
        largest = max(len(block) for block in blocks)
        batches = validation_batches_per_worker(num_samples, 3, global_count)
        assert 3 * (batches - 1) < max(largest, 1) <= 3 * batches
    assert shard_pieces([3, 0, 4, 2], range(2, 8)) == [
        ShardPiece(0, 2, 3),
        ShardPiece(2, 0, 4),
        ShardPiece(3, 0, 1),
    ]


def test_shard_index_lists_keys_and_offsets_and_a_read_can_start_there(tmp_path: Path):
    (path,) = write_index_shards(tmp_path, num_shards=1, samples_per_shard=4)
    index = index_shard(path)
    assert index.keys == [f"00000{position:04d}" for position in range(4)] and index.damage is None
    assert [sample.key for sample in iter_tar_samples(path, index.offsets[2])] == index.keys[2:]
    piped = index_shard(f"pipe:cat {path}", max_samples=3)
    assert (piped.keys, piped.offsets) == (index.keys[:3], None)


def test_validation_from_pipe_urls_reads_what_local_paths_read(tmp_path: Path):
    urls = write_index_shards(tmp_path, num_shards=2, samples_per_shard=3)
    local = make_stream(urls, num_samples=None, training=False, num_workers=2)
    piped = make_stream([f"pipe:cat {url}" for url in urls], num_samples=None, training=False, num_workers=2)
    assert sorted(keys_of(batches(local, 2))) == sorted(keys_of(batches(piped, 2)))
    assert len([key for key in keys_of(batches(piped, 2)) if key]) == 6
