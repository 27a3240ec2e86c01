"""A bad configuration stops `train.py` with one clear error line naming the key: a missing data path, a
checkpoint that does not fit the model, an unknown config group entry, a resolution the autoencoder and UNet
cannot divide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from modules.runtime.config_checks import (
    ConfigError,
    check_checkpoint_matches,
    check_config,
    check_data_paths,
)
from modules.training.video_diffusion_module import FROZEN_PREFIXES
from tests.conftest import REPO_ROOT, compose_config
from tests.helpers.train_runs import child_env, run_train, toy_data_dir


def _train_fails(args: list[str], tmp_path: Path) -> str:
    """Run `python train.py ARGS` (no tiny overrides: it must fail before building anything) and return the
    one output line carrying the error."""
    command = [sys.executable, "train.py", f"hydra.run.dir={tmp_path / 'run'}", *args]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    return result.stderr


def _one_error_line(output: str, marker: str) -> str:
    lines = [line for line in output.splitlines() if marker in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def test_missing_data_path_names_the_key(tmp_path):
    output = _train_fails(["data=webvid", f"paths.data_dir={tmp_path / 'nowhere'}"], tmp_path)
    line = _one_error_line(output, "ConfigError: ")
    assert line.startswith("modules.runtime.config_checks.ConfigError: data.train_urls: ")
    assert f"{tmp_path / 'nowhere'}/webvid/train/00000.tar does not exist" in line
    assert "(10728 of 10728 local shard paths missing)" in line


def test_data_path_check_skips_toy_sets_and_remote_urls(tmp_path):
    cfg = compose_config("train", [], tmp_path)  # data=shapes under a data_dir that does not exist yet
    check_config(cfg)
    shard = tmp_path / "train-0.tar"
    shard.write_bytes(b"")
    remote = OmegaConf.create(
        {
            "paths": {"data_dir": str(tmp_path)},
            "data": {"train_urls": [str(shard), "pipe:aws s3 cp s3://bucket/{0..9}.tar -"], "val_urls": None},
        }
    )
    check_data_paths(remote)
    remote.data.val_urls = str(tmp_path / "val" / "{0..1}.tar")
    with pytest.raises(ConfigError, match=r"^data.val_urls: .*val/0.tar does not exist \(2 of 2"):
        check_data_paths(remote)


def test_unknown_config_group_entry_is_named(tmp_path):
    output = _train_fails(["trainer=a100x5"], tmp_path)
    _one_error_line(output, "Could not find 'trainer/a100x5'")
    assert "Available options in 'trainer'" in output


def test_indivisible_resolution_names_the_key(tmp_path):
    cfg = compose_config("train", ["resolution.height=34"], tmp_path)
    with pytest.raises(ConfigError, match=r"^resolution.height=34 is not divisible by 4 "):
        check_config(cfg)


def _checkpoint_of(cfg, path: Path) -> Path:
    """A Lightning-style checkpoint of a freshly built model: its state dict without the frozen encoders."""
    model = instantiate(cfg.model)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(FROZEN_PREFIXES)}
    torch.save({"state_dict": state, "run_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


def test_checkpoint_of_another_model_names_ckpt_path(tmp_path, tmp_path_factory):
    wider = compose_config("train", ["backbone.unet.model_channels=64"], tmp_path / "wider")
    checkpoint = _checkpoint_of(wider, tmp_path / "wider.ckpt")
    data_dir = toy_data_dir(tmp_path_factory)
    result = run_train([f"ckpt_path={checkpoint}"], tmp_path / "run", data_dir)
    assert result.returncode != 0
    line = _one_error_line(result.stderr, "ConfigError: ")
    assert line.startswith(
        f"modules.runtime.config_checks.ConfigError: ckpt_path={checkpoint} does not match"
    )
    assert "shape-mismatched keys (first: net.unet." in line
    assert "trained with net modules.scvideo.scvideo_denoiser.SCVideoDenoiser" in line


def test_checkpoint_of_the_same_model_passes(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    checkpoint = _checkpoint_of(cfg, tmp_path / "same.ckpt")
    check_checkpoint_matches(instantiate(cfg.model), str(checkpoint))
    check_checkpoint_matches(instantiate(cfg.model), None)
