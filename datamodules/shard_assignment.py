"""Which shards and how many samples each data-loading process (DDP rank x dataloader worker) reads.

Every process is one of `G = world_size * num_workers` global workers, numbered
`g = rank * num_workers + worker_id`.

Shards: with at least `G` shards, global worker `g` reads shards `g, g + G, g + 2G, ...` of the (per
epoch and pass shuffled, in training) shard list, so no two processes read the same shard in a pass.
With fewer shards than global workers every process reads all shards and keeps samples `g, g + G, ...`
of the stream (small data sets only; every process then reads every byte, but decodes only its share).

Training samples: a rank produces `batches_per_rank * batch_size` samples per epoch, identical on every
rank, so DDP ranks never wait on each other at the end of an epoch. The batches are dealt to the rank's
dataloader workers as evenly as possible (worker `w` gets one more while `w < batches_per_rank % W`);
each worker yields whole batches only.

Validation samples are assigned by position instead: the `N` samples of a validation pass (listed in shard
order, `tar_samples.index_shard`) are cut into `G` contiguous blocks, global worker `g` taking positions
`[g * N // G, (g + 1) * N // G)`, so every sample belongs to exactly one process whatever the shard sizes, and
a process reads only the shards its block overlaps. Every worker yields the same number of batches,
`ceil(ceil(N / G) / batch_size)`, padding after its last usable sample, so every rank runs the same number of
validation batches whatever its samples decode to.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorkerSlot:
    """One data-loading process: DDP `rank` of `world_size`, dataloader worker `worker_id` of `num_workers`."""

    rank: int
    world_size: int
    worker_id: int
    num_workers: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if not 0 <= self.worker_id < self.num_workers:
            raise ValueError(f"worker id {self.worker_id} is outside {self.num_workers} workers")

    @property
    def global_index(self) -> int:
        return self.rank * self.num_workers + self.worker_id

    @property
    def global_count(self) -> int:
        return self.world_size * self.num_workers


@dataclass(frozen=True)
class ShardAssignment:
    """The shards one process reads and which of their samples it keeps (`index % sample_stride == sample_offset`)."""

    urls: list[str]
    sample_stride: int
    sample_offset: int

    def keeps(self, sample_index: int) -> bool:
        """Whether the `sample_index`-th sample of the pass's stream belongs to this process."""
        return sample_index % self.sample_stride == self.sample_offset


def assign_shards(urls: Sequence[str], slot: WorkerSlot, order_seed: Sequence[int] | None) -> ShardAssignment:
    """Shards for `slot`; `order_seed` shuffles the shard list first (the same seed on every process)."""
    ordered = list(urls)
    if order_seed is not None:
        permutation = np.random.default_rng(list(order_seed)).permutation(len(ordered))
        ordered = [ordered[index] for index in permutation]
    if len(ordered) >= slot.global_count:
        return ShardAssignment(ordered[slot.global_index :: slot.global_count], 1, 0)
    return ShardAssignment(ordered, slot.global_count, slot.global_index)


def batches_per_rank(num_samples: int, batch_size: int, world_size: int) -> int:
    """Whole batches each rank produces from `num_samples` samples shared by `world_size` ranks."""
    return num_samples // world_size // batch_size


def batches_for_worker(num_samples: int, batch_size: int, slot: WorkerSlot) -> int:
    """Whole batches the worker `slot` produces: its share of the rank's `batches_per_rank`."""
    rank_batches = batches_per_rank(num_samples, batch_size, slot.world_size)
    extra = 1 if slot.worker_id < rank_batches % slot.num_workers else 0
    return rank_batches // slot.num_workers + extra


@dataclass(frozen=True)
class ShardPiece:
    """Positions `[start, stop)` within shard number `shard` of a list of shards."""

    shard: int
    start: int
    stop: int


def validation_block(num_samples: int, slot: WorkerSlot) -> range:
    """The positions of the `num_samples` validation samples (in shard order) that `slot` reads."""
    count = slot.global_count
    return range(slot.global_index * num_samples // count, (slot.global_index + 1) * num_samples // count)


def validation_batches_per_worker(num_samples: int, batch_size: int, global_count: int) -> int:
    """Batches every worker yields in a validation pass: enough for the largest block, `ceil(N / G)` samples."""
    largest_block = -(-num_samples // global_count)
    return max(1, -(-largest_block // batch_size))


def shard_pieces(shard_sizes: Sequence[int], block: range) -> list[ShardPiece]:
    """The parts of the shards (of `shard_sizes` samples each, in order) that the positions `block` cover."""
    pieces = []
    shard_start = 0
    for shard, size in enumerate(shard_sizes):
        start, stop = max(block.start, shard_start), min(block.stop, shard_start + size)
        if start < stop:
            pieces.append(ShardPiece(shard, start - shard_start, stop - shard_start))
        shard_start += size
    return pieces
