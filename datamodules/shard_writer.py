"""Write WebDataset shards in the video2dataset layout (`KEY.mp4`, `KEY.txt`, `KEY.json`).

A shard set is `OUT/00000.tar, OUT/00001.tar, ...`; shard `s` holds samples `s * N ... s * N + N - 1`
of the source (N = samples per shard), keyed `SSSSSIIII` (shard index, then index within the shard,
as video2dataset names them). Writing is resumable: a shard whose final name exists is complete and
is skipped; a shard is written under `NAME.tar.partial` and renamed atomically when it is complete,
so a crash never leaves a half-written file under a shard name. A source sample may be missing (the
sample factory returns None): its key is left out and the shard holds fewer than N samples.
"""

import io
import json
import logging
import math
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSample:
    """One sample to write: the encoded video, its caption and a json-serialisable metadata dict."""

    key: str
    video: bytes
    caption: str
    metadata: dict[str, Any] = field(default_factory=dict)
    video_extension: str = "mp4"


@dataclass(frozen=True)
class ShardSetReport:
    """What `write_shard_set` did: shards written now, shards already complete, samples written, samples missing."""

    shards_written: int
    shards_skipped: int
    samples_written: int
    samples_missing: int


def shard_path(out_dir: str | Path, shard_index: int) -> Path:
    """`out_dir/00042.tar` for shard 42."""
    return Path(out_dir) / f"{shard_index:05d}.tar"


def sample_key(shard_index: int, index_in_shard: int, samples_per_shard: int) -> str:
    """video2dataset key: shard index (5 digits) then index within the shard (at least 4 digits)."""
    digits = max(4, len(str(samples_per_shard - 1)))
    return f"{shard_index:05d}{index_in_shard:0{digits}d}"


def write_shard(path: str | Path, samples: Iterable[ShardSample]) -> int:
    """Write `samples` to the tar `path` atomically (via `path.partial`); returns how many were written."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with tarfile.open(partial, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            metadata = {"key": sample.key, "caption": sample.caption, **sample.metadata}
            _add_member(tar, f"{sample.key}.{sample.video_extension}", sample.video)
            _add_member(tar, f"{sample.key}.txt", sample.caption.encode("utf-8"))
            _add_member(tar, f"{sample.key}.json", json.dumps(metadata, sort_keys=True).encode("utf-8"))
            count += 1
    os.replace(partial, path)
    return count


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one file with fixed owner, mode and time, so equal inputs give byte-identical shards."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_shard_set(
    out_dir: str | Path,
    num_samples: int,
    samples_per_shard: int,
    make_sample: Callable[[int, str], ShardSample | None],
    description: str = "writing shards",
) -> ShardSetReport:
    """Write samples `0 .. num_samples - 1` as shards of `samples_per_shard`, skipping complete shards.

    Args:
        out_dir: the shard directory (created if missing).
        num_samples: source samples.
        samples_per_shard: N, samples per shard (the last shard may hold fewer).
        make_sample: `(source_index, key) -> ShardSample`, or None when the source sample is missing.
        description: the progress bar's label.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(num_samples / samples_per_shard)
    complete = [shard_path(out_dir, shard).exists() for shard in range(num_shards)]
    already_done = sum(
        min(samples_per_shard, num_samples - shard * samples_per_shard)
        for shard in range(num_shards)
        if complete[shard]
    )
    if any(complete):
        log.info(
            "%s: %d of %d shards in %s are complete, skipping them",
            description,
            sum(complete),
            num_shards,
            out_dir,
        )
    tally = _Tally()
    with tqdm(total=num_samples, initial=already_done, desc=description, unit="video") as progress:
        for shard in range(num_shards):
            if not complete[shard]:
                first = shard * samples_per_shard
                indices = range(first, min(first + samples_per_shard, num_samples))
                samples = _shard_samples(shard, indices, samples_per_shard, make_sample, tally, progress)
                tally.written += write_shard(shard_path(out_dir, shard), samples)
    return ShardSetReport(
        shards_written=num_shards - sum(complete),
        shards_skipped=sum(complete),
        samples_written=tally.written,
        samples_missing=tally.missing,
    )


@dataclass
class _Tally:
    written: int = 0
    missing: int = 0


def _shard_samples(
    shard: int,
    indices: range,
    samples_per_shard: int,
    make_sample: Callable[[int, str], ShardSample | None],
    tally: _Tally,
    progress: tqdm,
) -> Iterator[ShardSample]:
    """The samples of one shard, made lazily; missing ones are counted in `tally`."""
    for index in indices:
        sample = make_sample(index, sample_key(shard, index - indices.start, samples_per_shard))
        progress.update(1)
        if sample is None:
            tally.missing += 1
        else:
            yield sample
