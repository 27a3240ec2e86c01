"""Find the checkpoint to resume from: the newest *complete* one.

A checkpoint is a file or, under FSDP with `state_dict_type: sharded`, a directory (`step00000500.ckpt/`).

Files. Lightning writes them through fsspec with a temporary file and an atomic rename, so a file that exists
under its final name was written completely; a file can still be damaged afterwards (disk full on copy, a
truncated transfer).

Sharded directories. Lightning's FSDPStrategy writes, through torch.distributed.checkpoint: first every rank's
shard files (`__<rank>_0.distcp`, written in place), then `.metadata` (rank 0; the index of every tensor's shards:
file, offset, length; written to a temporary file and renamed), then `meta.pt` (rank 0; Lightning's loops,
callbacks and run config, written in place). `last.ckpt/` and `preempted.ckpt/` are rewritten in place, so a
directory is complete only if `.metadata` and `meta.pt` exist, `meta.pt` is a whole torch.save file, every shard
file the index lists is there and long enough, and none of them is newer than `.metadata` (beyond the clock skew
of a multi-node run), nor `.metadata` newer than `meta.pt` (a rewrite cut off part-way).

Every candidate is therefore checked before it is trusted, newest first, and a damaged one is reported and skipped
in favour of the previous good one.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

from torch.distributed.checkpoint import FileSystemReader

log = logging.getLogger(__name__)

SHARD_INDEX_FILE = ".metadata"  # torch.distributed.checkpoint's index of the shards
LIGHTNING_PART_FILE = (
    "meta.pt"  # Lightning's part of a sharded checkpoint: all but weights and optimizer states
)
# how much newer than the index a shard file may look: the ranks of a multi-node run stamp their files by their own
# clocks; a rewrite cut off part-way is newer by the time between two saves of the same directory (minutes)
CLOCK_SKEW_S = 60.0


def _is_complete_torch_file(path: Path) -> bool:
    """A torch.save file is a zip archive; a truncated one has no readable central directory or bad CRCs."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def sharded_checkpoint_problem(path: Path) -> str | None:
    """Why the directory `path` is not a complete sharded checkpoint (see the module docstring), or None if it is.
    Reading the index unpickles `.metadata`, as loading the checkpoint does: trust the directory as a checkpoint."""
    index_file, lightning_file = path / SHARD_INDEX_FILE, path / LIGHTNING_PART_FILE
    if not index_file.is_file():
        return f"it has no {SHARD_INDEX_FILE} (the shard index torch.distributed.checkpoint writes last)"
    if not lightning_file.is_file():
        return f"it has no {LIGHTNING_PART_FILE} (Lightning's part, written after the shards)"
    if not _is_complete_torch_file(lightning_file):
        return f"its {LIGHTNING_PART_FILE} is truncated or corrupt"
    try:
        index = FileSystemReader(str(path)).read_metadata()
    except (pickle.UnpicklingError, EOFError, OSError, AttributeError, ValueError) as error:
        return f"its {SHARD_INDEX_FILE} cannot be read ({type(error).__name__})"
    needed: dict[str, int] = {}
    for info in (index.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    if not needed:
        return f"its {SHARD_INDEX_FILE} lists no shard files"
    index_time = index_file.stat().st_mtime
    for name, length in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"shard file {name} is missing"
        if shard.stat().st_size < length:
            return f"shard file {name} is truncated ({shard.stat().st_size} of {length} bytes)"
        if shard.stat().st_mtime > index_time + CLOCK_SKEW_S:
            return f"shard file {name} is newer than {SHARD_INDEX_FILE}: a rewrite was cut off"
    if index_time > lightning_file.stat().st_mtime:
        return f"{SHARD_INDEX_FILE} is newer than {LIGHTNING_PART_FILE}: a rewrite was cut off"
    return None


def is_complete_checkpoint(path: Path) -> bool:
    """Whether the checkpoint file or sharded checkpoint directory `path` was written completely and is intact."""
    if path.is_dir():
        return sharded_checkpoint_problem(path) is None
    return _is_complete_torch_file(path)


def written_at(path: Path) -> float:
    """When the checkpoint was last written: a file's mtime; a directory's newest mtime, its own or a file's in it
    (a rewrite in place changes the files, not always the directory)."""
    if not path.is_dir():
        return path.stat().st_mtime
    return max([path.stat().st_mtime, *(file.stat().st_mtime for file in path.iterdir() if file.is_file())])


def newest_complete_checkpoint(directory: str | Path) -> Path | None:
    """The most recently written complete `*.ckpt` file or sharded directory under `directory` (last.ckpt
    included), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = sorted(directory.glob("*.ckpt"), key=written_at, reverse=True)
    for candidate in candidates:
        if candidate.is_dir():
            problem = sharded_checkpoint_problem(candidate)
            damage = None if problem is None else f"incomplete: {problem}"
        else:
            damage = None if _is_complete_torch_file(candidate) else "truncated or corrupt"
        if damage is None:
            return candidate
        log.error("checkpoint %s is %s; falling back to an older one <ckpt_path=auto>", candidate, damage)
    return None


def resolve_resume_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """`None` -> start fresh; `"auto"` -> newest complete checkpoint in `checkpoint_dir` (or fresh); else the path,
    a file or sharded directory, which must exist and be complete."""
    if ckpt_path is None:
        return None
    if ckpt_path == "auto":
        found = newest_complete_checkpoint(checkpoint_dir)
        if found is None:
            log.info("no checkpoint in %s: starting a new run <ckpt_path=auto>", checkpoint_dir)
            return None
        log.info("resuming from %s <ckpt_path=auto>", found)
        return str(found)
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} <ckpt_path>")
    if path.is_dir():
        problem = sharded_checkpoint_problem(path)
        if problem is not None:
            raise ValueError(
                f"ckpt_path={path} is a directory but no complete sharded checkpoint: {problem} <ckpt_path>"
            )
    elif not _is_complete_torch_file(path):
        raise ValueError(
            f"checkpoint {path} is truncated or corrupt <ckpt_path>; use ckpt_path=auto to fall back"
        )
    return str(path)
