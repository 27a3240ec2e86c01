"""Every headline training command and every one the README shows builds: the composed config instantiates its
model (paper sizes on the meta device), datamodule, callbacks, loggers and strategy, and the Trainer itself for
the CPU trainers. Composing alone does not catch a key that one model's config leaks into another's constructor.

The README's `python train.py ...` lines are read from README.md itself, so a command added there is tested here.
"""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from modules.runtime.instantiation import instantiate_callbacks, instantiate_loggers
from modules.training.video_diffusion_module import VideoDiffusionModule
from tests.conftest import REPO_ROOT, compose_config

# the headline commands: the default CPU run, each model, a paper trainer and resolutions, as overrides
CARD = [
    [],
    ["model=artv"],
    ["model=artv", "trainer=a100x4"],
    ["model=scvideo", "resolution=256px"],
    ["model=artv", "resolution=320px"],
]
# overrides that name local files or launchers: dropped, the rest of the command is what is built
NOT_BUILT = (
    "backbone.pretrained=",
    "text_encoder.weights_path=",
    "hydra/launcher=",
    "hparams_search=",
    "ckpt_path=",
)


def readme_commands() -> list[list[str]]:
    """Every `python train.py ...` line of README.md, sweeps expanded into their points (`-m a=x,y`)."""
    text = (REPO_ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("python train.py"):
            continue
        words = [w for w in shlex.split(line)[2:] if w != "-m" and not w.startswith(NOT_BUILT)]
        choices = [w.split("=", 1) for w in words]
        points = itertools.product(*[[f"{key}={v}" for v in value.split(",")] for key, value in choices])
        commands.extend(list(point) for point in points)
    return commands


def _unique(commands: list[list[str]]) -> list[list[str]]:
    seen, unique = set(), []
    for command in commands:
        if tuple(command) not in seen:
            seen.add(tuple(command))
            unique.append(command)
    return unique


COMMANDS = _unique(CARD + readme_commands())


@pytest.mark.parametrize("overrides", COMMANDS, ids=lambda o: " ".join(o) or "(no arguments)")
def test_command_builds(overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_config("train", overrides, tmp_path)
    paper_size = cfg.backbone.unet.model_channels >= 320
    with torch.device("meta") if paper_size else torch.device("cpu"):
        model = instantiate(cfg.model)
    assert isinstance(model, VideoDiffusionModule)
    assert model.net.trainable_named_parameters()
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)
    callbacks = instantiate_callbacks(cfg.callbacks)
    loggers = instantiate_loggers(cfg.logger)
    if cfg.trainer.accelerator == "cpu":
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        assert isinstance(trainer, L.Trainer)
    elif isinstance(cfg.trainer.strategy, DictConfig):
        assert instantiate(cfg.trainer.strategy) is not None


def test_the_readme_shows_train_commands() -> None:
    """The parser above finds the README's commands (a renamed heading or format would silently test nothing)."""
    commands = readme_commands()
    assert len(commands) >= 5
    assert ["experiment=scvideo_webvid256", "trainer=a100x4"] in commands


def test_model_choice_gets_that_models_from_scratch_recipe(tmp_path: Path) -> None:
    """`model=artv` on the default tiny backbone trains ART-V's from-scratch settings, not SCVideo's."""
    artv = compose_config("train", ["model=artv"], tmp_path / "artv")
    assert "trainable" not in artv.model.net and artv.model.net.mask_unet.model_channels == 32
    scvideo = compose_config("train", [], tmp_path / "scvideo")
    assert scvideo.model.net.trainable == "all" and scvideo.model.optimizer.lr == 1e-3
    paper = compose_config("train", ["model=scvideo", "backbone=sd14"], tmp_path / "paper")
    assert paper.model.net.trainable == "paper" and paper.model.optimizer.lr == 3e-5
