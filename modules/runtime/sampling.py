"""What sample.py needs: build the model for sampling (from a Lightning checkpoint or from weights named in the
config), read prompts, and name output files."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from datamodules.video_decoding import ResizeGeometry
from modules.checkpoints.sharded import load_checkpoint_metadata, load_run_config, load_sharded_weights
from modules.runtime.checkpoint_discovery import newest_complete_checkpoint, sharded_checkpoint_problem
from modules.training.video_diffusion_module import VideoDiffusionModule

log = logging.getLogger(__name__)


def _trained_net(checkpoint_path: str | Path) -> str | None:
    """The `model.net._target_` a checkpoint was trained with (from its stored run config), or None if it stores
    no run config."""
    stored = load_run_config(checkpoint_path)
    return None if stored is None else stored.get("model", {}).get("net", {}).get("_target_")


def find_latest_training_checkpoint(log_dir: str | Path, net_target: str | None = None) -> Path | None:
    """The newest complete checkpoint of any run under `<log_dir>/train` (what `make demo` trained), or None. With
    `net_target`, of the newest run whose stored run config trained that net (`model.net._target_`)."""
    runs = Path(log_dir) / "train"
    if not runs.is_dir():
        return None
    directories = sorted(runs.glob("**/checkpoints"), key=lambda p: p.stat().st_mtime, reverse=True)
    for directory in directories:
        found = newest_complete_checkpoint(directory)
        if found is not None and (net_target is None or _trained_net(found) == net_target):
            return found
    return None


def resolve_sampling_checkpoint(
    ckpt_path: str | None, log_dir: str | Path, net_target: str | None = None
) -> Path | None:
    """`null` -> none; `latest` -> newest training checkpoint if any (of the net `net_target` when given); else the
    given file or sharded FSDP directory, which must exist (a directory must be a complete sharded checkpoint)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "latest":
        found = find_latest_training_checkpoint(log_dir, net_target)
        if found is None:
            of_net = "" if net_target is None else f" of model.net._target_={net_target}"
            log.warning(
                "no trained checkpoint%s under %s/train: sampling with the weights the config names (random if "
                "none) <ckpt_path=latest>",
                of_net,
                log_dir,
            )
        return found
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} <ckpt_path>")
    problem = sharded_checkpoint_problem(path) if path.is_dir() else None
    if problem is not None:
        raise ValueError(
            f"ckpt_path={path} is a directory but no complete sharded checkpoint: {problem} <ckpt_path>"
        )
    return path


# Keys of the `sampler` node that sample.py reads for generation itself and that are no sampler constructor
# argument: `init_noise` (gaussian | retrieval, modules/pos/). They are left out when the sampler is built.
GENERATION_ONLY_SAMPLER_KEYS = ("init_noise",)


def sampler_constructor_config(sampler_cfg: DictConfig) -> DictConfig:
    """The sampler config without `GENERATION_ONLY_SAMPLER_KEYS` (resolved), for instantiation."""
    container = OmegaConf.to_container(sampler_cfg, resolve=True)
    for key in GENERATION_ONLY_SAMPLER_KEYS:
        container.pop(key, None)
    return OmegaConf.create(container)


def _model_config(cfg: DictConfig) -> DictConfig:
    """cfg.model, its sampler without generation-only keys."""
    if not any(key in cfg.model.sampler for key in GENERATION_ONLY_SAMPLER_KEYS):
        return cfg.model
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    model_cfg.sampler = sampler_constructor_config(cfg.model.sampler)
    return model_cfg


def build_model_for_sampling(cfg: DictConfig) -> VideoDiffusionModule:
    """The network architecture comes from the checkpoint's stored run config (so it always matches the weights);
    sampler and guidance come from this sampling config (so they can be changed from the command line). A sharded
    FSDP checkpoint directory is consolidated here, in this one process (modules/checkpoints/sharded.py)."""
    checkpoint_path = resolve_sampling_checkpoint(cfg.get("ckpt_path"), cfg.paths.log_dir)
    if checkpoint_path is None:
        return instantiate(_model_config(cfg))
    checkpoint = load_checkpoint_metadata(checkpoint_path)
    model_cfg = _model_config(cfg)
    stored = checkpoint.get("run_config")
    if stored is not None:
        trained = OmegaConf.create(stored["model"])
        if trained.net._target_ != cfg.model.net._target_:
            raise ValueError(
                f"{checkpoint_path} was trained with net {trained.net._target_}, but this config builds "
                f"{cfg.model.net._target_}; sample with sample.py or eval.py, which take the model from the "
                "checkpoint (modules/runtime/checkpoint_config.py), or pass the matching model=... <model>"
            )
        trained.sampler = sampler_constructor_config(cfg.model.sampler)
        trained.guidance = cfg.model.guidance
        model_cfg = trained
    model: VideoDiffusionModule = instantiate(model_cfg)
    # frozen weights a checkpoint leaves out come from the pretrained file: it must be the one trained on
    model.check_frozen_weights(checkpoint, str(checkpoint_path))
    model.on_load_checkpoint(checkpoint)
    if checkpoint_path.is_dir():
        load_sharded_weights(model, checkpoint_path)
    else:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    log.info("loaded %s (step %s) <ckpt_path>", checkpoint_path, checkpoint.get("global_step", "?"))
    if cfg.get("use_ema", True):
        if model.ema is None:
            log.warning("the checkpoint has no EMA weights; sampling with the training weights <use_ema>")
        else:
            model.ema.copy_to(model.net.trainable_named_parameters())
            log.info("sampling with the EMA weights <use_ema=true>")
    return model


def read_prompts(prompt: str | list[str] | None, prompts_file: str | None) -> list[str]:
    """Prompts from a file (one per line, blank lines and #-comments skipped) or from `prompt` (str or list)."""
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path} <prompts_file>")
        prompts = [line.strip() for line in path.read_text().splitlines()]
        prompts = [p for p in prompts if p and not p.startswith("#")]
    elif isinstance(prompt, str):
        prompts = [prompt]
    else:
        prompts = list(prompt or [])
    if not prompts:
        raise ValueError('no prompt given: set prompt="..." or prompts_file=path <prompt>')
    return prompts


def video_filename(prompt: str, seed: int, suffix: str = ".mp4") -> str:
    """`a-red-circle-moving-left_seed0.mp4`: the prompt as a slug (at most 80 characters) plus the seed."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:80] or "prompt"
    return f"{slug}_seed{seed}{suffix}"


def load_first_frame(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An image file as the first frame of text+image-to-video: scaled to cover `height x width` and centre-cropped
    like the training clips, `[1, 3, height, width]` in [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"first-frame image not found: {path} <first_frame>")
    image = Image.open(path).convert("RGB")
    geometry = ResizeGeometry.cover(image.height, image.width, height, width)
    image = image.resize((geometry.scaled_width, geometry.scaled_height), Image.Resampling.BOX)
    box = (geometry.left, geometry.top, geometry.left + width, geometry.top + height)
    pixels = torch.from_numpy(np.asarray(image.crop(box), dtype=np.float32).copy())
    return (pixels / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)
