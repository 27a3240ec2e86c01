"""Resume picks the newest complete checkpoint, a file or a sharded FSDP directory, and never trusts a truncated or
incomplete one."""

from __future__ import annotations

import os
import re
import time

import pytest
import torch

from modules.runtime.checkpoint_discovery import (
    is_complete_checkpoint,
    newest_complete_checkpoint,
    resolve_resume_path,
)
from modules.runtime.sampling import resolve_sampling_checkpoint
from tests.helpers.sharded_checkpoints import set_mtime, write_sharded_checkpoint


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


# ---- sharded FSDP checkpoint directories ------------------------------------------------------------------
def _sharded(path, step: int, mtime: float):
    """A complete sharded checkpoint directory of `step`, every file stamped `mtime`."""
    write_sharded_checkpoint(path, {"w": torch.randn(64, 64)}, {"global_step": step})
    for file in path.iterdir():
        set_mtime(file, mtime)
    set_mtime(path, mtime)
    return path


def test_complete_sharded_directory_is_found_and_resumed(tmp_path):
    now = time.time()
    _write(tmp_path / "step00000010.ckpt", 10, now - 20)
    sharded = _sharded(tmp_path / "step00000020.ckpt", 20, now - 10)
    assert {p.name for p in sharded.iterdir()} == {".metadata", "__0_0.distcp", "meta.pt"}

    assert is_complete_checkpoint(sharded)
    assert newest_complete_checkpoint(tmp_path) == sharded
    assert resolve_resume_path("auto", tmp_path) == str(sharded)
    assert resolve_resume_path(str(sharded), tmp_path) == str(sharded)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / ".metadata").unlink(), "it has no .metadata"),
        (lambda d: (d / "meta.pt").unlink(), "it has no meta.pt"),
        (lambda d: (d / "meta.pt").write_bytes((d / "meta.pt").read_bytes()[:100]), "meta.pt is truncated"),
        (lambda d: (d / "__0_0.distcp").unlink(), "shard file __0_0.distcp is missing"),
        (
            lambda d: (d / "__0_0.distcp").write_bytes((d / "__0_0.distcp").read_bytes()[:1000]),
            r"shard file __0_0.distcp is truncated \(1000 of \d+ bytes\)",
        ),
        # a rewrite in place (last.ckpt/) cut off after a shard was written again
        (lambda d: set_mtime(d / "__0_0.distcp", time.time() + 600), "newer than .metadata: a rewrite"),
    ],
)
def test_incomplete_sharded_directory_is_skipped_and_refused(tmp_path, caplog, damage, reason):
    now = time.time()
    _write(tmp_path / "step00000010.ckpt", 10, now - 20)
    sharded = _sharded(tmp_path / "step00000020.ckpt", 20, now - 10)
    damage(sharded)
    set_mtime(sharded, now - 10)

    assert not is_complete_checkpoint(sharded)
    assert newest_complete_checkpoint(tmp_path) == tmp_path / "step00000010.ckpt"
    assert re.search(f"checkpoint {sharded} is incomplete: .*{reason}", caplog.text)
    with pytest.raises(ValueError) as error:
        resolve_resume_path(str(sharded), tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert re.match(
        f"ckpt_path={sharded} is a directory but no complete sharded checkpoint: .*{reason}", message
    )
    assert message.endswith("<ckpt_path>")


def test_directory_without_shards_is_refused_naming_the_key(tmp_path):
    empty = tmp_path / "run" / "checkpoints"
    empty.mkdir(parents=True)
    with pytest.raises(
        ValueError, match=rf"^ckpt_path={empty} is a directory but no complete sharded checkpoint: "
    ):
        resolve_resume_path(str(empty), tmp_path)
    with pytest.raises(
        ValueError, match=rf"^ckpt_path={empty} is a directory but no complete sharded checkpoint: "
    ):
        resolve_sampling_checkpoint(str(empty), tmp_path)
