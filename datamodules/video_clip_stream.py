"""An iterable dataset of video clips read from WebDataset shards (video2dataset layout).

Each item is `{"video": float [T, C, H, W] in [-1, 1], "caption": str, "key": str}`; the DataLoader's
default collation batches it to `video [B, T, C, H, W]`, `caption list[str]`, `key list[str]`.

Epochs. The shard stream is endless: a process cycles through its shards (`shard_assignment.py`),
pass after pass. An epoch is a fixed number of samples, `num_samples` (`data.samples_per_epoch` in
training, `data.val_samples` in validation) shared by the ranks: every rank yields exactly
`num_samples // world_size // batch_size` whole batches (`__len__` reports the samples).

- Training: the shard order is reshuffled per epoch and pass, samples are shuffled within a pass by a
  buffer of `shuffle_buffer` encoded samples, and the clip start is random. The epoch number is
  the last `set_epoch` value plus the number of times this worker has started iterating since, so
  each epoch reads different data, with persistent workers or without.
- Exact resume: `set_epoch(epoch, consumed_batches)` makes the next iteration continue epoch `epoch`
  after the `consumed_batches` batches this rank had already consumed. The DataLoader takes batches
  from its workers in turn, so each worker knows how many of its own batches were consumed; it replays
  them (reads and decodes them, drawing the same random numbers) without yielding them, so the
  following batches equal those of an uninterrupted run. As the DataLoader starts again with worker 0,
  the workers' roles are rotated for that iteration (worker 0 plays the worker whose turn was next).
  The replay costs the decoding of the skipped part of the epoch.
- Validation: shards in the listed order, no shuffling, centred clips; the same samples every time.
  A validation set smaller than `num_samples` is repeated (cycled), a larger one truncated; set
  `data.val_samples` to at most the validation set's size to see every sample exactly once.

Faulty samples (undecodable video, shorter than the clip, no caption, zero-byte video, no video member)
and unreadable shards are skipped and counted per reason (`counters`); rank 0 logs them with the sample
key. With `skip_corrupt=False` they raise instead. A full pass without one usable sample raises.
"""

import itertools
import json
import logging
from collections.abc import Iterator

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.frame_selection import FrameSelection, VideoTooShortError
from datamodules.shard_assignment import (
    ShardAssignment,
    WorkerSlot,
    assign_shards,
    batches_for_worker,
    batches_per_rank,
)
from datamodules.stream_counters import StreamCounters
from datamodules.tar_samples import CorruptShardError, RawSample, iter_tar_samples
from datamodules.video_decoding import CorruptVideoError, decode_clip

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi")
# Skips logged per worker and reason before only every `_LOG_EVERY`-th is.
_LOG_FIRST = 10
_LOG_EVERY = 100
_REASON_TEXT = {
    "corrupt_video": "corrupt video",
    "too_short": "too-short video",
    "missing_caption": "caption-less sample",
    "empty_video": "zero-byte video",
    "missing_video": "video-less sample",
    "corrupt_shard": "rest of unreadable shard",
}


class VideoClipStream(IterableDataset):
    """Clips of `selection.num_frames` frames at `height x width` from WebDataset shards.

    Args:
        urls: expanded shard URLs (`tar_samples.expand_shard_urls`).
        selection: frame stride or target fps, and the number of frames.
        height, width: output frame size (resize to cover, centre crop).
        num_samples: samples per epoch over all ranks.
        batch_size: the DataLoader's batch size (ranks and workers yield whole batches).
        rank, world_size: this DDP process and the number of processes.
        num_workers: the DataLoader's `num_workers` (0: load in the main process).
        training: random shard order, shuffle buffer and clip start if True; deterministic if False.
        shuffle_buffer: encoded samples held for shuffling within a pass (<= 1: no shuffling).
        seed: base of every random draw (shard order, buffer, clip start).
        skip_corrupt: skip and count faulty samples (True) or raise (False).
        config_key: where `urls` came from, named in errors (`data.train_urls`).
    """

    def __init__(
        self,
        urls: list[str],
        selection: FrameSelection,
        *,
        height: int,
        width: int,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        training: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        skip_corrupt: bool = True,
        config_key: str = "data.train_urls",
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError(f"{config_key}: no shard URLs")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if batches_per_rank(num_samples, batch_size, world_size) == 0:
            raise ValueError(
                f"{num_samples} samples per epoch ({config_key}) make no whole batch of data.batch_size="
                f"{batch_size} on each of {world_size} ranks; use at least {batch_size * world_size} samples"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.urls = list(urls)
        self.selection = selection
        self.height = height
        self.width = width
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.training = training
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        self.config_key = config_key
        self.base_epoch = 0
        self.resume_batches = 0
        self.counters = StreamCounters(max(1, num_workers))

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        return batches_per_rank(self.num_samples, self.batch_size, self.world_size) * self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | str]]:
        slot = self._worker_slot()
        started = self.counters.start_iteration(slot.worker_id)
        resuming = self.training and started == 0 and self.resume_batches > 0
        if resuming:
            # the DataLoader asks worker 0 first: it plays the worker whose turn it was, worker 1 the next, ...
            turn = (slot.worker_id + self.resume_batches) % slot.num_workers
            slot = WorkerSlot(slot.rank, slot.world_size, turn, slot.num_workers)
        epoch = (self.base_epoch + started) if self.training else 0
        rng = np.random.default_rng([self.seed, epoch, slot.rank, slot.worker_id]) if self.training else None
        quota = batches_for_worker(self.num_samples, self.batch_size, slot) * self.batch_size
        replay = self._consumed_batches(slot) * self.batch_size if resuming else 0
        produced = 0
        for pass_index in itertools.count():
            if produced == quota:
                return
            order_seed = (self.seed, epoch, pass_index) if self.training else None
            assignment = assign_shards(self.urls, slot, order_seed)
            samples = self._raw_samples(assignment, slot)
            if self.training and self.shuffle_buffer > 1:
                samples = _shuffled(samples, self.shuffle_buffer, rng)
            usable = 0
            for sample in samples:
                item = self._to_item(sample, slot, rng)
                if item is None:
                    continue
                usable += 1
                produced += 1
                if produced > replay:
                    yield item
                if produced == quota:
                    return
            if usable == 0:
                raise RuntimeError(
                    f"rank {slot.rank} worker {slot.worker_id} found no usable sample in a full pass over its "
                    f"{len(assignment.urls)} shards of {self.config_key} (first: {assignment.urls[0]}); "
                    f"skipped so far: {self.counters.skip_counts()}"
                )

    def set_epoch(self, epoch: int, consumed_batches: int = 0) -> None:
        """Make the next iteration epoch `epoch`, continuing after the first `consumed_batches` batches of it that
        this rank already consumed (exact resume); call from the main process before the workers start."""
        rank_batches = batches_per_rank(self.num_samples, self.batch_size, self.world_size)
        if not 0 <= consumed_batches < rank_batches:
            raise ValueError(
                f"consumed_batches={consumed_batches} is outside the {rank_batches} batches of an epoch on this rank"
            )
        self.base_epoch = epoch
        self.resume_batches = consumed_batches
        self.counters.reset_iterations()

    def _consumed_batches(self, slot: WorkerSlot) -> int:
        """How many of the rank's first `resume_batches` batches came from worker `slot` (the DataLoader takes
        batch i from worker i % num_workers)."""
        return max(0, -(-(self.resume_batches - slot.worker_id) // slot.num_workers))

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per reason in this process and its workers."""
        return self.counters.skip_counts()

    def _worker_slot(self) -> WorkerSlot:
        worker = get_worker_info()
        if worker is None:
            return WorkerSlot(self.rank, self.world_size, 0, 1)
        if worker.num_workers != self.num_workers:
            raise ValueError(
                f"the DataLoader runs {worker.num_workers} workers but the dataset was built for "
                f"data.num_workers={self.num_workers}; build both from the same value"
            )
        return WorkerSlot(self.rank, self.world_size, worker.id, worker.num_workers)

    def _raw_samples(self, assignment: ShardAssignment, slot: WorkerSlot) -> Iterator[RawSample]:
        """This process's share of the encoded samples of one pass over its shards."""
        sample_index = 0
        for url in assignment.urls:
            try:
                for sample in iter_tar_samples(url):
                    if assignment.keeps(sample_index):
                        yield sample
                    sample_index += 1
            except CorruptShardError as error:
                self._skip("corrupt_shard", slot, key="-", url=url, detail=str(error))

    def _to_item(
        self, sample: RawSample, slot: WorkerSlot, rng: np.random.Generator | None
    ) -> dict[str, torch.Tensor | str] | None:
        """Decode one sample to `{"video": [T, C, H, W], "caption", "key"}`, or count and skip it."""
        extension = next((ext for ext in VIDEO_EXTENSIONS if ext in sample.members), None)
        if extension is None:
            members = ", ".join(sorted(sample.members)) or "none"
            return self._skip("missing_video", slot, sample.key, sample.url, f"members: {members}")
        data = sample.members[extension]
        if not data:
            return self._skip(
                "empty_video", slot, sample.key, sample.url, f"{sample.key}.{extension} is 0 bytes"
            )
        caption = read_caption(sample.members)
        if caption is None:
            return self._skip("missing_caption", slot, sample.key, sample.url, "no .txt nor json 'caption'")
        try:
            clip = decode_clip(data, self.selection, height=self.height, width=self.width, rng=rng)
        except VideoTooShortError as error:
            return self._skip("too_short", slot, sample.key, sample.url, str(error))
        except CorruptVideoError as error:
            return self._skip("corrupt_video", slot, sample.key, sample.url, str(error))
        self.counters.add_decoded(slot.worker_id, clip.frames_decoded)
        video = rearrange(torch.from_numpy(clip.frames), "t h w c -> t c h w").float() / 127.5 - 1.0
        return {"video": video, "caption": caption, "key": sample.key}

    def _skip(self, reason: str, slot: WorkerSlot, key: str, url: str, detail: str) -> None:
        """Count a faulty sample and log it on rank 0, or raise when `skip_corrupt` is off."""
        config = self.selection.describe() if reason == "too_short" else "data.skip_corrupt=true"
        message = f"{_REASON_TEXT[reason]} {key} in {url}: {detail}"
        if not self.skip_corrupt:
            raise ValueError(f"{message}; set data.skip_corrupt=true to skip and count such samples")
        count = self.counters.add_skip(slot.worker_id, reason)
        if slot.rank == 0 and (count <= _LOG_FIRST or count % _LOG_EVERY == 0):
            log.warning(
                "skipping %s (%s #%d in worker %d) <%s>", message, reason, count, slot.worker_id, config
            )
        return None


def read_caption(members: dict[str, bytes]) -> str | None:
    """The caption of a sample: its `.txt` member, else the `caption` field of its `.json`; None if neither."""
    text = members.get("txt", b"").decode("utf-8", errors="replace").strip()
    if text:
        return text
    try:
        metadata = json.loads(members.get("json", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    caption = metadata.get("caption") if isinstance(metadata, dict) else None
    if not isinstance(caption, str):
        return None
    return caption.strip() or None


def _shuffled(items: Iterator[RawSample], buffer_size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """Shuffle a stream with a buffer: each arriving item replaces a random buffered one, which is yielded."""
    buffer: list[RawSample] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        position = int(rng.integers(len(buffer)))
        yield buffer[position]
        buffer[position] = item
    for position in rng.permutation(len(buffer)):
        yield buffer[position]
