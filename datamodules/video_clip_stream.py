"""An iterable dataset of video clips read from WebDataset shards (video2dataset layout).

Each item is `{"video": uint8 [T, C, H, W], "caption": str, "key": str, "valid": bool}`; the DataLoader's
default collation batches it to `video [B, T, C, H, W]`, `caption list[str]`, `key list[str]`, `valid [B]`
(the batch format, and the conversion to [-1, 1] on the device: `clip_batches.py`).

Training epochs. The training stream is endless: a process cycles through its shards
(`shard_assignment.py`), pass after pass. An epoch is a fixed number of samples, `num_samples`
(`data.samples_per_epoch`) shared by the ranks: every rank yields exactly
`num_samples // world_size // batch_size` whole batches (`__len__` reports the samples).

- Sampling is without replacement within a pass: in each pass over the shards every sample is read by exactly
  one process (rank x worker), so ranks and workers never read the same data at once. Passes repeat the data
  and epochs need not end with a pass; a process whose shards hold fewer samples than others' starts its next
  pass sooner, so with unequal shards some samples come round again before others have been seen once.
- The shard order is reshuffled per epoch and pass, samples are shuffled within a pass by a buffer of
  `shuffle_buffer` encoded samples, and the clip start is random. The epoch number is the last `set_epoch`
  value plus the number of times this worker has started iterating since, so each epoch reads different data,
  with persistent workers or without.
- Exact resume: `set_epoch(epoch, consumed_batches)` makes the next iteration continue epoch `epoch`
  after the `consumed_batches` batches this rank had already consumed. The DataLoader takes batches
  from its workers in turn, so each worker knows how many of its own batches were consumed; it replays
  them (reads and decodes them, drawing the same random numbers) without yielding them, so the
  following batches equal those of an uninterrupted run. As the DataLoader starts again with worker 0,
  the workers' roles are rotated for that iteration (worker 0 plays the worker whose turn was next).
  The replay costs the decoding of the skipped part of the epoch.

Validation passes. At construction the stream lists the sample keys of the validation shards
(`tar_samples.index_shard`: member headers only for local tars), up to `num_samples` (`data.val_samples`, a
cap: the first `num_samples` samples in shard order; None: every sample). A pass reads each listed sample
exactly once over all ranks and workers, in contiguous blocks by position (`shard_assignment.py`), with
centred clips: the same samples and frames every time. Faulty samples are dropped, so a pass yields the
usable ones; each worker then pads its last batches (`valid` False, zero video) to the same batch count as
every other worker, so every rank runs the same number of batches and the padding stays out of the loss.

Faulty samples (reasons in `stream_counters.SKIP_REASONS`) are skipped, counted once per reading and logged
(first ones per reason and worker, then every hundredth) with the sample key, the `videoid` of its metadata
when it has one, and the config key. A validation pass reads every sample once, so its counts (reset when a
pass starts) are per pass, and only a worker's first pass logs; a training run counts (and may log) a faulty
sample in every pass over the shards, as each pass reads it once.
With `skip_corrupt=False` faults raise instead. A full training pass without one usable sample raises.
"""

import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.frame_selection import FrameSelection, VideoTooShortError
from datamodules.latent_shards import MOMENTS_MEMBER, TEXT_MEMBER, decode_array
from datamodules.shard_assignment import (
    ShardAssignment,
    WorkerSlot,
    assign_shards,
    batches_for_worker,
    batches_per_rank,
    shard_pieces,
    validation_batches_per_worker,
    validation_block,
)
from datamodules.stream_counters import StreamCounters
from datamodules.tar_samples import CorruptShardError, RawSample, ShardIndex, index_shard, iter_tar_samples
from datamodules.video_decoding import CorruptVideoError, NoVideoStreamError, decode_clip

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi")
# Skips logged per worker and reason before only every `_LOG_EVERY`-th is.
_LOG_FIRST = 10
_LOG_EVERY = 100
_REASON_TEXT = {
    "missing_video": "video-less sample",
    "empty": "zero-byte video",
    "corrupt": "corrupt video",
    "no_video_stream": "video without a video stream",
    "too_short": "too-short video",
    "missing_caption": "caption-less sample",
    "bad_metadata": "sample with unreadable metadata",
    "unreadable_shard": "sample of an unreadable shard",
}
Item = dict[str, torch.Tensor | str]


class VideoClipStream(IterableDataset):
    """Clips of `selection.num_frames` frames at `height x width` from WebDataset shards.

    Args:
        urls: expanded shard URLs (`tar_samples.expand_shard_urls`).
        selection: frame stride or target fps, and the number of frames.
        height, width: output frame size (resize to cover, centre crop).
        num_samples: training: samples per epoch over all ranks; validation: at most this many samples of the
            shards, the first in shard order (None: all of them).
        batch_size: the DataLoader's batch size (ranks and workers yield whole batches).
        rank, world_size: this DDP process and the number of processes.
        num_workers: the DataLoader's `num_workers` (0: load in the main process).
        training: random shard order, shuffle buffer and clip start if True; an exact pass if False.
        shuffle_buffer: encoded samples held for shuffling within a pass (<= 1: no shuffling).
        seed: base of every random draw (shard order, buffer, clip start).
        skip_corrupt: skip and count faulty samples (True) or raise (False).
        config_key: where `urls` came from, named in errors (`data.train_urls`).
        samples_key: where `num_samples` came from, named in errors (`data.samples_per_epoch`).
    """

    def __init__(
        self,
        urls: list[str],
        selection: FrameSelection,
        *,
        height: int,
        width: int,
        num_samples: int | None,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        training: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        skip_corrupt: bool = True,
        config_key: str = "data.train_urls",
        samples_key: str = "data.samples_per_epoch",
        latent_shards: bool = False,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError(f"{config_key}: no shard URLs")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if training and (num_samples is None or batches_per_rank(num_samples, batch_size, world_size) == 0):
            raise ValueError(
                f"{num_samples} samples per epoch ({samples_key}) make no whole batch of data.batch_size="
                f"{batch_size} on each of {world_size} ranks; use at least {batch_size * world_size} samples"
            )
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"{samples_key} must be >= 1 or null, got {num_samples}")
        self.urls = list(urls)
        self.selection = selection
        self.height = height
        self.width = width
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.training = training
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        self.config_key = config_key
        self.latent_shards = latent_shards
        self._latent_shape: tuple[int, ...] | None = None  # [M, h, w] of the stored moments, for padding
        self.base_epoch = 0
        self.resume_batches = 0
        self.counters = StreamCounters(max(1, num_workers))
        # validation: the samples of one pass, listed once here so that workers inherit the list
        self.shard_index = [] if training else index_validation_shards(self.urls, num_samples, config_key)
        self.num_samples = num_samples if training else sum(len(index.keys) for index in self.shard_index)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (per validation pass, padding included)."""
        if self.training:
            return batches_per_rank(self.num_samples, self.batch_size, self.world_size) * self.batch_size
        workers = max(1, self.num_workers)
        batches = validation_batches_per_worker(self.num_samples, self.batch_size, self.world_size * workers)
        return batches * workers * self.batch_size

    def __iter__(self) -> Iterator[Item]:
        slot = self._worker_slot()
        started = self.counters.start_iteration(slot.worker_id)
        if not self.training:
            yield from self._validation_pass(slot, first_pass=started == 0)
            return
        resuming = started == 0 and self.resume_batches > 0
        if resuming:
            # the DataLoader asks worker 0 first: it plays the worker whose turn it was, worker 1 the next, ...
            turn = (slot.worker_id + self.resume_batches) % slot.num_workers
            slot = WorkerSlot(slot.rank, slot.world_size, turn, slot.num_workers)
        epoch = self.base_epoch + started
        rng = np.random.default_rng([self.seed, epoch, slot.rank, slot.worker_id])
        quota = batches_for_worker(self.num_samples, self.batch_size, slot) * self.batch_size
        replay = self._consumed_batches(slot) * self.batch_size if resuming else 0
        produced = 0
        for pass_index in itertools.count():
            if produced == quota:
                return
            assignment = assign_shards(self.urls, slot, (self.seed, epoch, pass_index))
            samples = self._raw_samples(assignment, slot)
            if self.shuffle_buffer > 1:
                samples = _shuffled(samples, self.shuffle_buffer, rng)
            usable = 0
            for sample in samples:
                item = self._to_item(sample, slot, rng, log_skips=True)
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
        """Skipped samples per reason in this process and its workers (validation: in the last pass)."""
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

    def _validation_pass(self, slot: WorkerSlot, first_pass: bool) -> Iterator[Item]:
        """This worker's block of the validation samples, decoded (faulty ones dropped), then padding up to the
        batch count every worker yields. Skips are logged in the first pass only (later ones repeat it)."""
        self.counters.reset_slot(slot.worker_id)
        block = validation_block(self.num_samples, slot)
        batches = validation_batches_per_worker(self.num_samples, self.batch_size, slot.global_count)
        produced = 0
        for sample in self._block_samples(block, slot, first_pass):
            item = self._to_item(sample, slot, rng=None, log_skips=first_pass)
            if item is not None:
                produced += 1
                yield item
        for _ in range(batches * self.batch_size - produced):
            yield self._padding()

    def _block_samples(self, block: range, slot: WorkerSlot, log_skips: bool) -> Iterator[RawSample]:
        """The encoded samples at positions `block` of the validation pass; samples lost to an unreadable
        shard are counted (each once, with its key) instead."""
        sizes = [len(index.keys) for index in self.shard_index]
        for piece in shard_pieces(sizes, block):
            index = self.shard_index[piece.shard]
            # a local tar is entered at the block's first sample; any other is read from its start
            position = piece.start if index.offsets is not None else 0
            offset = index.offsets[piece.start] if index.offsets is not None else 0
            failure = None
            try:
                for sample in iter_tar_samples(index.url, offset):
                    if position >= piece.start:
                        if sample.key != index.keys[position]:
                            raise RuntimeError(
                                f"{self.config_key}: shard {index.url} changed since it was indexed (sample "
                                f"{position} is {sample.key}, was {index.keys[position]}); restart the run"
                            )
                        yield sample
                    position += 1
                    if position == piece.stop:
                        break
            except CorruptShardError as error:
                failure = str(error)
            detail = failure or f"the shard ended after {position} samples; its index lists {len(index.keys)}"
            for lost in range(max(position, piece.start), piece.stop):
                self._skip(
                    "unreadable_shard", slot, RawSample(index.keys[lost], {}, index.url), detail, log_skips
                )

    def _raw_samples(self, assignment: ShardAssignment, slot: WorkerSlot) -> Iterator[RawSample]:
        """This process's share of the encoded samples of one training pass over its shards."""
        sample_index = 0
        for url in assignment.urls:
            try:
                for sample in iter_tar_samples(url):
                    if assignment.keeps(sample_index):
                        yield sample
                    sample_index += 1
            except CorruptShardError as error:
                # the sample being read when the shard broke belongs to one process: it alone counts the loss
                if assignment.keeps(sample_index):
                    self._skip(
                        "unreadable_shard", slot, RawSample("-", {}, url), f"the rest is lost: {error}"
                    )

    def _to_item(
        self, sample: RawSample, slot: WorkerSlot, rng: np.random.Generator | None, log_skips: bool
    ) -> Item | None:
        """Decode one sample to `{"video": uint8 [T, C, H, W], "caption", "key", "valid"}`, or count and skip it."""
        if self.latent_shards:
            return self._latent_item(sample, slot, rng, log_skips)
        extension = next((ext for ext in VIDEO_EXTENSIONS if ext in sample.members), None)
        if extension is None:
            members = ", ".join(sorted(sample.members)) or "none"
            return self._skip("missing_video", slot, sample, f"members: {members}", log_skips)
        data = sample.members[extension]
        if not data:
            return self._skip("empty", slot, sample, f"{sample.key}.{extension} is 0 bytes", log_skips)
        try:
            sample_metadata(sample.members)
        except ValueError as error:
            return self._skip("bad_metadata", slot, sample, str(error), log_skips)
        caption = read_caption(sample.members)
        if caption is None:
            return self._skip("missing_caption", slot, sample, "no .txt nor json 'caption'", log_skips)
        try:
            clip = decode_clip(data, self.selection, height=self.height, width=self.width, rng=rng)
        except VideoTooShortError as error:
            return self._skip("too_short", slot, sample, str(error), log_skips)
        except NoVideoStreamError as error:
            return self._skip("no_video_stream", slot, sample, str(error), log_skips)
        except CorruptVideoError as error:
            return self._skip("corrupt", slot, sample, str(error), log_skips)
        self.counters.add_decoded(slot.worker_id, clip.frames_decoded)
        video = rearrange(torch.from_numpy(clip.frames), "t h w c -> t c h w")
        return {"video": video, "caption": caption, "key": sample.key, "valid": torch.tensor(True)}

    def _latent_item(
        self, sample: RawSample, slot: WorkerSlot, rng: np.random.Generator | None, log_skips: bool
    ) -> Item | None:
        """A latent-shard sample (datamodules/latent_shards.py) to `{"moments": [T, M, h, w] (stored dtype), "caption",
        "key", "valid"}` (plus `text_embedding` `[L, D]` when stored): T consecutive stored frames, from a random
        start (training) or the centred one (validation), as the video clip's start is drawn."""
        data = sample.members.get(MOMENTS_MEMBER)
        if not data:
            return self._skip("missing_video", slot, sample, f"no {sample.key}.{MOMENTS_MEMBER}", log_skips)
        caption = read_caption(sample.members)
        if caption is None:
            return self._skip("missing_caption", slot, sample, "no .txt nor json 'caption'", log_skips)
        try:
            moments = decode_array(data)
        except ValueError as error:
            return self._skip("corrupt", slot, sample, f"{MOMENTS_MEMBER}: {error}", log_skips)
        clip_frames, stored = self.selection.num_frames, moments.shape[0]
        if stored < clip_frames:
            detail = f"{stored} stored frames, the clip needs {clip_frames}"
            return self._skip("too_short", slot, sample, detail, log_skips)
        last_start = stored - clip_frames
        start = int(rng.integers(0, last_start + 1)) if rng is not None else last_start // 2
        self._latent_shape = tuple(moments.shape[1:])
        item: Item = {
            "moments": torch.from_numpy(np.ascontiguousarray(moments[start : start + clip_frames])),
            "caption": caption,
            "key": sample.key,
            "valid": torch.tensor(True),
        }
        if TEXT_MEMBER in sample.members:
            item["text_embedding"] = torch.from_numpy(decode_array(sample.members[TEXT_MEMBER]))
        return item

    def _padding(self) -> Item:
        """A padding item: zero video (or moments), empty caption and key, `valid` False."""
        if self.latent_shards:
            if (
                self._latent_shape is None
            ):  # this worker read no usable sample: take the shape from the first one
                first = next(iter_tar_samples(self.urls[0]))
                self._latent_shape = tuple(decode_array(first.members[MOMENTS_MEMBER]).shape[1:])
            moments = torch.zeros(self.selection.num_frames, *self._latent_shape, dtype=torch.float16)
            return {"moments": moments, "caption": "", "key": "", "valid": torch.tensor(False)}
        video = torch.zeros(self.selection.num_frames, 3, self.height, self.width, dtype=torch.uint8)
        return {"video": video, "caption": "", "key": "", "valid": torch.tensor(False)}

    def _skip(
        self, reason: str, slot: WorkerSlot, sample: RawSample, detail: str, log_it: bool = True
    ) -> None:
        """Count a faulty sample and log it, or raise when `skip_corrupt` is off."""
        config = self.selection.describe() if reason == "too_short" else "data.skip_corrupt=true"
        videoid = _videoid(sample.members)
        named = sample.key if videoid is None else f"{sample.key} (videoid {videoid})"
        message = f"{_REASON_TEXT[reason]} {named} in {sample.url}: {detail}"
        if not self.skip_corrupt:
            raise ValueError(f"{message}; set data.skip_corrupt=true to skip and count such samples")
        count = self.counters.add_skip(slot.worker_id, reason)
        if log_it and (count <= _LOG_FIRST or count % _LOG_EVERY == 0):
            log.warning(
                "skipping %s (%s #%d in rank %d worker %d) <%s>",
                message,
                reason,
                count,
                slot.rank,
                slot.worker_id,
                config,
            )
        return None


def index_validation_shards(urls: list[str], max_samples: int | None, config_key: str) -> list[ShardIndex]:
    """The sample lists of the validation shards in order, up to `max_samples` samples in all (None: all).
    A damaged shard contributes the samples up to the damage, one that cannot be opened none; both are logged."""
    indexes = []
    remaining = max_samples
    for url in urls:
        if remaining == 0:
            break
        try:
            index = index_shard(url, remaining)
        except CorruptShardError as error:
            log.warning("leaving out validation shard %s: %s <%s>", url, error, config_key)
            continue
        if index.damage is not None:
            log.warning(
                "validation shard %s ends in damage after %d sample headers (%s): a sample cut off there counts "
                "as unreadable_shard, none after it is read <%s>",
                url,
                len(index.keys),
                index.damage,
                config_key,
            )
        indexes.append(index)
        remaining = None if remaining is None else remaining - len(index.keys)
    if not any(index.keys for index in indexes):
        raise ValueError(f"{config_key}: the validation shards hold no sample ({urls[0]}, ...)")
    return indexes


def sample_metadata(members: dict[str, bytes]) -> dict[str, Any]:
    """The `.json` member of a sample as a dict ({} when it has none).

    Raises:
        ValueError: the member is not UTF-8 JSON holding an object.
    """
    if "json" not in members:
        return {}
    try:
        metadata = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f".json is not JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError(f".json holds a {type(metadata).__name__}, not an object")
    return metadata


def _videoid(members: dict[str, bytes]) -> str | None:
    """The `videoid` of a sample's metadata, when it has readable metadata with one."""
    try:
        videoid = sample_metadata(members).get("videoid")
    except ValueError:
        return None
    return None if videoid is None else str(videoid)


def read_caption(members: dict[str, bytes]) -> str | None:
    """The caption of a sample: its `.txt` member, else the `caption` field of its `.json`; None if neither."""
    text = members.get("txt", b"").decode("utf-8", errors="replace").strip()
    if text:
        return text
    try:
        caption = sample_metadata(members).get("caption")
    except ValueError:
        return None
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
