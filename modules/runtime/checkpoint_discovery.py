"""Find the checkpoint to resume from: the newest *complete* one.

Lightning writes checkpoints through fsspec with a temporary file and an atomic rename, so a file that exists
under its final name was written completely; a file can still be damaged afterwards (disk full on copy, a
truncated transfer). Every candidate is therefore opened and checked before it is trusted, newest first, and a
damaged one is reported and skipped in favour of the previous good one.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)


def is_complete_checkpoint(path: Path) -> bool:
    """A torch.save file is a zip archive; a truncated one has no readable central directory or bad CRCs."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def newest_complete_checkpoint(directory: str | Path) -> Path | None:
    """The most recently written complete `*.ckpt` under `directory` (last.ckpt included), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if is_complete_checkpoint(candidate):
            return candidate
        log.error(
            "checkpoint %s is truncated or corrupt; falling back to an older one <ckpt_path=auto>", candidate
        )
    return None


def resolve_resume_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """`None` -> start fresh; `"auto"` -> newest complete checkpoint in `checkpoint_dir` (or fresh); else the path,
    which must exist and be complete."""
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
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} <ckpt_path>")
    if not is_complete_checkpoint(path):
        raise ValueError(
            f"checkpoint {path} is truncated or corrupt <ckpt_path>; use ckpt_path=auto to fall back"
        )
    return str(path)
