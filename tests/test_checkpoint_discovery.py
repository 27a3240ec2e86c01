"""Resume picks the newest complete checkpoint and never trusts a truncated one."""

from __future__ import annotations

import os
import time

import pytest
import torch

from modules.runtime.checkpoint_discovery import (
    is_complete_checkpoint,
    newest_complete_checkpoint,
    resolve_resume_path,
)


def _write(path, step: int, mtime: float) -> None:
    torch.save({"global_step": step, "state_dict": {"w": torch.randn(64, 64)}}, path)
    os.utime(path, (mtime, mtime))


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    now = time.time()
    _write(tmp_path / "step00000010.ckpt", 10, now - 20)
    _write(tmp_path / "step00000020.ckpt", 20, now - 10)
    newest = tmp_path / "last.ckpt"
    _write(newest, 30, now)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    os.utime(newest, (now, now))

    assert not is_complete_checkpoint(newest)
    found = newest_complete_checkpoint(tmp_path)
    assert found == tmp_path / "step00000020.ckpt"
    assert "truncated or corrupt" in caplog.text
    assert torch.load(found, weights_only=True)["global_step"] == 20


def test_resolve_resume_path_modes(tmp_path):
    assert resolve_resume_path(None, tmp_path) is None
    assert resolve_resume_path("auto", tmp_path / "missing") is None
    good = tmp_path / "good.ckpt"
    _write(good, 1, time.time())
    assert resolve_resume_path("auto", tmp_path) == str(good)
    assert resolve_resume_path(str(good), tmp_path) == str(good)
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        resolve_resume_path(str(tmp_path / "nope.ckpt"), tmp_path)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        resolve_resume_path(str(bad), tmp_path)
