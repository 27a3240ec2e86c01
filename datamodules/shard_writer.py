"""Write WebDataset shards in the video2dataset layout (`KEY.mp4`, `KEY.txt`, `KEY.json`), resumably.

A shard set is `OUT/00000.tar, OUT/00001.tar, ...`; shard `s` covers source samples `s * N ... s * N + N - 1`
(N = samples per shard), keyed `SSSSSIIII` (shard index, then index within the shard, as video2dataset
names them). A source sample the sample factory leaves out (`LeftOut`: a missing or broken video) gets no
member in the shard, which then holds fewer than N samples.

Each shard has a manifest, `OUT/00000_manifest.json` (not a `.tar`, so a directory URL never reads it): the
settings the shard was written with, the id of every source sample it covers, and every left-out sample with
its reason and the state of its source (for a video file: name, size, mtime). A shard is complete when its
manifest matches its tar's size, its ids are the source's ids now, and every left-out sample's source is
as it was. A rerun rewrites exactly the shards that are not complete: never written, interrupted, covering
source rows that changed, or holding left-out samples whose source changed since (a late video file
arrived, a broken one was replaced). A manifest written with other settings (samples per shard, the
caller's settings) is an error: mixing them would make a set no single command describes.

Atomic: the tar is written under `NAME.tar.partial` and renamed when complete, then its manifest the same
way. A crash never leaves a half-written file under a final name, and a tar without a manifest (a crash
between the two renames, or a shard of a writer from before manifests) is rewritten.
"""

import io
import json
import logging
import math
import os
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ShardSample:
    """One sample to write: the encoded video, its caption and a json-serialisable metadata dict."""

    key: str
    video: bytes
    caption: str
    metadata: dict[str, Any] = field(default_factory=dict)
    video_extension: str = "mp4"


@dataclass(frozen=True)
class LeftOut:
    """A source sample that is not written: why (`reason`, a one-line `detail`), and the `state` of its source
    (json-serialisable) that a later run hands to `source_changed` to decide whether to try it again."""

    reason: str
    detail: str = ""
    state: dict[str, Any] = field(default_factory=dict)


SampleFactory = Callable[[int, str], ShardSample | LeftOut]


@dataclass(frozen=True)
class LeftOutRecord:
    """A left-out sample as its shard's manifest records it: source index and id, why, and its source's state."""

    shard: int
    index: int
    source_id: str
    reason: str
    detail: str
    state: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the shard is the manifest's)."""
        return {
            "index": self.index,
            "source_id": self.source_id,
            "reason": self.reason,
            "detail": self.detail,
            "state": self.state,
        }


@dataclass(frozen=True)
class ShardManifest:
    """What one shard holds: the source samples it covers (`first_index`, one id each), how many it holds, which
    were left out, the settings it was written with, and its tar's size."""

    shard: int
    first_index: int
    source_ids: list[str]
    samples_written: int
    left_out: list[LeftOutRecord]
    settings: dict[str, Any]
    tar_bytes: int

    def save(self, path: Path) -> None:
        """Write the manifest atomically (via `path.partial`)."""
        document = {
            "format": MANIFEST_FORMAT,
            "shard": self.shard,
            "first_index": self.first_index,
            "samples_written": self.samples_written,
            "tar_bytes": self.tar_bytes,
            "settings": self.settings,
            "left_out": [record.as_dict() for record in self.left_out],
            "source_ids": self.source_ids,
        }
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> "ShardManifest | None":
        """The manifest at `path`; None when there is none or it is unreadable or of another format."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != MANIFEST_FORMAT:
                return None
            shard = int(document["shard"])
            return cls(
                shard=shard,
                first_index=int(document["first_index"]),
                source_ids=[str(source_id) for source_id in document["source_ids"]],
                samples_written=int(document["samples_written"]),
                left_out=[LeftOutRecord(shard=shard, **record) for record in document["left_out"]],
                settings=document["settings"],
                tar_bytes=int(document["tar_bytes"]),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class ShardSetSpec:
    """A shard set: where, how many source samples, how many a shard, and how to tell that the source changed.

    Attributes:
        out_dir: the shard directory.
        num_samples: source samples, indexed `0 .. num_samples - 1`.
        samples_per_shard: N, source samples a shard covers (the last may cover fewer).
        settings: what else decides the shards' content (json-serialisable); recorded in every manifest.
        source_id: the id of a source sample (a CSV row's videoid); recorded, and compared on a rerun.
        source_changed: whether a left-out sample's source differs from its recorded state now.
    """

    out_dir: Path
    num_samples: int
    samples_per_shard: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    source_id: Callable[[int], str] = str
    source_changed: Callable[[LeftOutRecord], bool] = lambda record: False

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.samples_per_shard)

    def shard_indices(self, shard: int) -> range:
        """The source indices shard `shard` covers."""
        first = shard * self.samples_per_shard
        return range(first, min(first + self.samples_per_shard, self.num_samples))

    def recorded_settings(self) -> dict[str, Any]:
        """The settings as a manifest records them (after a JSON round trip, so they compare equal)."""
        return json.loads(json.dumps({"samples_per_shard": self.samples_per_shard, **self.settings}))


@dataclass(frozen=True)
class ShardPlan:
    """Which shards of a set to (re)write, each with why, and the manifests of those that are complete."""

    spec: ShardSetSpec
    to_write: dict[int, str]
    complete: dict[int, ShardManifest]

    def indices(self) -> Iterator[int]:
        """The source indices of the shards to write, in the order `write_planned_shards` asks for them."""
        for shard in sorted(self.to_write):
            yield from self.spec.shard_indices(shard)


@dataclass(frozen=True)
class ShardSetReport:
    """What a write did, and what the whole set now holds.

    Attributes:
        shards_written: shards written by this run.
        shards_skipped: shards that were complete and kept as they were.
        samples_written: samples written by this run.
        samples_left_out: source samples left out of the shards written by this run.
        num_shards: shards in the set.
        samples_in_set: samples in all shards of the set.
        left_out: every left-out source sample of the set (kept shards' from their manifests), in source order.
    """

    shards_written: int
    shards_skipped: int
    samples_written: int
    samples_left_out: int
    num_shards: int
    samples_in_set: int
    left_out: tuple[LeftOutRecord, ...]


def shard_path(out_dir: str | Path, shard_index: int) -> Path:
    """`out_dir/00042.tar` for shard 42."""
    return Path(out_dir) / f"{shard_index:05d}.tar"


def manifest_path(out_dir: str | Path, shard_index: int) -> Path:
    """`out_dir/00042_manifest.json` for shard 42."""
    return Path(out_dir) / f"{shard_index:05d}_manifest.json"


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


def plan_shard_set(spec: ShardSetSpec, description: str = "shards") -> ShardPlan:
    """Sort the shards of `spec` into complete ones and ones to (re)write (see the module docstring).

    Raises:
        ValueError: `samples_per_shard < 1`, or a manifest in `out_dir` records other settings.
    """
    if spec.samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {spec.samples_per_shard}")
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    settings = spec.recorded_settings()
    to_write: dict[int, str] = {}
    complete: dict[int, ShardManifest] = {}
    for shard in range(spec.num_shards):
        manifest = ShardManifest.load(manifest_path(spec.out_dir, shard))
        if manifest is not None and manifest.settings != settings:
            raise ValueError(
                f"{manifest_path(spec.out_dir, shard)} was written with {manifest.settings}, this run has "
                f"{settings}; rerun with the same settings or write to another output folder"
            )
        why = _incomplete_because(spec, shard, manifest)
        if why is None and manifest is not None:
            complete[shard] = manifest
        else:
            to_write[shard] = why or "new"
    if complete:
        reasons = ", ".join(f"{count} {why}" for why, count in sorted(Counter(to_write.values()).items()))
        log.info(
            "%s: %d of %d shards in %s are complete, keeping them; writing %d%s",
            description,
            len(complete),
            spec.num_shards,
            spec.out_dir,
            len(to_write),
            f" ({reasons})" if reasons else "",
        )
    return ShardPlan(spec=spec, to_write=to_write, complete=complete)


def _incomplete_because(spec: ShardSetSpec, shard: int, manifest: ShardManifest | None) -> str | None:
    """Why shard `shard` must be (re)written, or None when it is complete."""
    tar = shard_path(spec.out_dir, shard)
    if not tar.exists():
        return "new"
    if manifest is None:
        return "without a manifest"
    if manifest.tar_bytes != tar.stat().st_size:
        return "whose manifest is of another write"
    indices = spec.shard_indices(shard)
    if manifest.first_index != indices.start or manifest.source_ids != [spec.source_id(i) for i in indices]:
        return "covering source rows that changed"
    if any(spec.source_changed(record) for record in manifest.left_out):
        return "with left-out samples whose source changed"
    return None


def write_planned_shards(
    plan: ShardPlan, make_sample: SampleFactory, description: str = "writing shards"
) -> ShardSetReport:
    """Write the shards `plan` lists, asking `make_sample(source_index, key)` for the samples of each in the
    order of `plan.indices()`, and record each shard's manifest."""
    spec = plan.spec
    already_done = sum(len(spec.shard_indices(shard)) for shard in plan.complete)
    manifests = dict(plan.complete)
    written_before = sum(manifest.samples_written for manifest in manifests.values())
    with tqdm(
        total=spec.num_samples,
        initial=already_done,
        desc=description,
        unit="video",
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    ) as progress:
        for shard in sorted(plan.to_write):
            manifests[shard] = _write_shard_with_manifest(spec, shard, make_sample, progress)
    new = [manifests[shard] for shard in plan.to_write]
    return ShardSetReport(
        shards_written=len(new),
        shards_skipped=len(plan.complete),
        samples_written=sum(manifest.samples_written for manifest in new),
        samples_left_out=sum(len(manifest.left_out) for manifest in new),
        num_shards=spec.num_shards,
        samples_in_set=written_before + sum(manifest.samples_written for manifest in new),
        left_out=tuple(record for shard in sorted(manifests) for record in manifests[shard].left_out),
    )


def write_shard_set(
    out_dir: str | Path,
    num_samples: int,
    samples_per_shard: int,
    make_sample: SampleFactory,
    description: str = "writing shards",
    *,
    settings: Mapping[str, Any] | None = None,
) -> ShardSetReport:
    """Write samples `0 .. num_samples - 1` as shards of `samples_per_shard`, keeping complete shards.

    Args:
        out_dir: the shard directory (created if missing).
        num_samples: source samples.
        samples_per_shard: N, samples per shard (the last shard may hold fewer).
        make_sample: `(source_index, key) -> ShardSample`, or `LeftOut` for a sample that cannot be written.
        description: the progress bar's label.
        settings: what else decides the shards' content; a rerun with other settings raises.
    """
    spec = ShardSetSpec(Path(out_dir), num_samples, samples_per_shard, settings=dict(settings or {}))
    return write_planned_shards(plan_shard_set(spec, description), make_sample, description)


def _write_shard_with_manifest(
    spec: ShardSetSpec, shard: int, make_sample: SampleFactory, progress: tqdm
) -> ShardManifest:
    """Write one shard, then its manifest."""
    indices = spec.shard_indices(shard)
    left_out: list[LeftOutRecord] = []

    def samples() -> Iterator[ShardSample]:
        for position, index in enumerate(indices):
            result = make_sample(index, sample_key(shard, position, spec.samples_per_shard))
            progress.update(1)
            if isinstance(result, LeftOut):
                left_out.append(
                    LeftOutRecord(
                        shard, index, spec.source_id(index), result.reason, result.detail, result.state
                    )
                )
            else:
                yield result

    tar = shard_path(spec.out_dir, shard)
    written = write_shard(tar, samples())
    manifest = ShardManifest(
        shard=shard,
        first_index=indices.start,
        source_ids=[spec.source_id(index) for index in indices],
        samples_written=written,
        left_out=left_out,
        settings=spec.recorded_settings(),
        tar_bytes=tar.stat().st_size,
    )
    manifest.save(manifest_path(spec.out_dir, shard))
    return manifest
