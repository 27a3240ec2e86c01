"""Checks of a composed config that turn would-be deep stack traces into one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from webdataset.shardlists import expand_urls

from modules.checkpoints.sharded import load_run_config
from modules.checkpoints.strict_load import compare_state_dict
from modules.pos.pos_sampling import FIRST_FRAME_WITH_POS, pos_requested
from modules.training.video_diffusion_module import VideoDiffusionModule


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _first_stage_factor(cfg: DictConfig) -> int | None:
    first_stage = cfg.get("backbone", {}).get("first_stage")
    if first_stage is None:
        return None
    if "factor" in first_stage:
        return int(first_stage.factor)
    if "ch_mult" in first_stage:
        return 2 ** (len(first_stage.ch_mult) - 1)
    return None


def _unet_factor(cfg: DictConfig) -> int:
    unet = cfg.get("backbone", {}).get("unet")
    if unet is None or "channel_mult" not in unet:
        return 1
    return 2 ** (len(unet.channel_mult) - 1)


def check_resolution(cfg: DictConfig) -> None:
    """Pixels must be divisible by first-stage factor x UNet down-sampling factor."""
    factor = _first_stage_factor(cfg)
    if factor is None or "resolution" not in cfg:
        return
    multiple = factor * _unet_factor(cfg)
    for axis in ("height", "width"):
        size = int(cfg.resolution[axis])
        if size % multiple:
            raise ConfigError(
                f"resolution.{axis}={size} is not divisible by {multiple} (autoencoder factor {factor} x UNet "
                f"down-sampling {multiple // factor}); pick a multiple of {multiple}"
            )


def _is_local(url: str) -> bool:
    if url.startswith("pipe:"):
        return False
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a one-letter scheme is a Windows drive letter


def _generated_on_demand(path: Path, toy_root: str | None) -> bool:
    """Whether `path` lies inside the toy data set that `prepare_data` generates when missing."""
    return toy_root is not None and path.resolve().is_relative_to(Path(toy_root).resolve())


def _local_paths(urls: str | ListConfig | None) -> list[Path]:
    """The local paths among shard URLs (brace patterns expanded; remote and `pipe:` URLs left out)."""
    if urls is None:
        return []
    patterns = list(urls) if isinstance(urls, ListConfig | list | tuple) else [urls]
    return [Path(url) for pattern in patterns for url in expand_urls(str(pattern)) if _is_local(url)]


def check_data_paths(cfg: DictConfig) -> None:
    """Every local shard, directory or file named by `data.train_urls` / `data.val_urls` must exist, unless it
    belongs to the toy set generated on demand (`data.toy_shards.root`). Remote and `pipe:` URLs are not checked."""
    data = cfg.get("data")
    if data is None:
        return
    toy_shards = data.get("toy_shards")
    toy_root = toy_shards.get("root") if toy_shards is not None else None
    for key in ("train_urls", "val_urls"):
        local = _local_paths(data.get(key))
        missing = [path for path in local if not path.exists() and not _generated_on_demand(path, toy_root)]
        if missing:
            raise ConfigError(
                f"data.{key}: {missing[0]} does not exist ({len(missing)} of {len(local)} local shard paths "
                f"missing); point data.{key} (or paths.data_dir={cfg.paths.data_dir}) at your shards"
            )


def check_checkpoint_matches(model: VideoDiffusionModule, ckpt_path: str | None) -> None:
    """The `state_dict` of the Lightning checkpoint `ckpt_path` must fit `model` key by key and shape by shape
    (the keys checkpoints leave out because the model rebuilds them excepted: the frozen encoders, and frozen net
    weights whose fingerprint must match the model's, `backbone.pretrained`). Sharded (directory) checkpoints are
    not checked."""
    if ckpt_path is None or Path(ckpt_path).is_dir():
        return
    # mmap: only the key and shape metadata is read here, not the tensors
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    state_dict = checkpoint.get("state_dict")
    if state_dict is None:
        raise ConfigError(
            f"ckpt_path={ckpt_path} has no 'state_dict'; it is not a Lightning training checkpoint"
        )
    model.check_frozen_weights(checkpoint, f"ckpt_path={ckpt_path}")
    report = compare_state_dict(model, state_dict, what="model", source=str(ckpt_path))
    missing = [key for key in report.missing if not model.leaves_out(key, checkpoint)]
    if not (missing or report.unexpected or report.shape_mismatches):
        return
    first = str(report.shape_mismatches[0]) if report.shape_mismatches else (missing or report.unexpected)[0]
    trained_net = checkpoint.get("run_config", {}).get("model", {}).get("net", {}).get("_target_", "unknown")
    raise ConfigError(
        f"ckpt_path={ckpt_path} does not match the model: {len(missing)} missing, {len(report.unexpected)} "
        f"unexpected, {len(report.shape_mismatches)} shape-mismatched keys (first: {first}); it was trained with "
        f"net {trained_net}: pass the model/backbone it was trained with, or another ckpt_path"
    )


def check_latent_shards(cfg: DictConfig) -> None:
    """Latent shards (`data.latent_shards`) must have been made with this run's first stage, resolution and frame
    sampling: each local shard directory's `latents_info.json` is compared with what the config implies."""
    data = cfg.get("data")
    if data is None or not data.get("latent_shards"):
        return
    from datamodules.latent_shards import check_latent_set, latent_set_info

    expected = latent_set_info(cfg, dtype="any", with_text=False)
    for key in ("train_urls", "val_urls"):
        local = _local_paths(data.get(key))
        for directory in sorted({path if path.is_dir() else path.parent for path in local}):
            try:
                check_latent_set(directory, expected, f"data.{key}")
            except ValueError as error:
                raise ConfigError(str(error)) from error


def check_config(cfg: DictConfig) -> None:
    """Run every check; raises ConfigError with the offending key."""
    check_resolution(cfg)
    check_data_paths(cfg)
    check_latent_shards(cfg)


def check_generation_options(cfg: DictConfig) -> None:
    """sample.py's `first_frame`, `multi_prompt` and `save_mask` against the abilities the configured net's class
    declares (`VideoDenoiser.abilities`), and a first frame against POS, before any weights load."""
    first_frame = bool(cfg.get("first_frame"))
    get_class(cfg.model.net._target_).abilities.check(
        first_frame=first_frame, multi_prompt=bool(cfg.get("multi_prompt")), masks=bool(cfg.get("save_mask"))
    )
    if first_frame and pos_requested(cfg):
        raise ConfigError(FIRST_FRAME_WITH_POS)


# config keys that define what a checkpoint's weights and data stream mean: a resume must not change them
RESUME_IDENTITY_KEYS = (
    "model",
    "schedule",
    "seed",
    "data.num_frames",
    "data.frame_stride",
    "data.target_fps",
)
# ... except these, which only affect sampling or name files that may move between machines
RESUME_FREE_KEYS = ("model.sampler", "model.guidance", "model.pretrained", "model.net.pretrained")


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def check_resume_config(cfg: DictConfig, ckpt_path: str | None) -> None:
    """A resumed run must keep the model, schedule, seed and clip layout it was trained with: the first key that
    differs from the checkpoint's stored run config is named. Steps, time, trainer, paths and sampling may change."""
    if ckpt_path is None:
        return
    stored = load_run_config(ckpt_path)
    if stored is None:
        return
    current = OmegaConf.to_container(cfg, resolve=True)

    def identity(config: dict[str, Any]) -> dict[str, Any]:
        flat = _flatten(config, "")
        return {
            key: value
            for key, value in flat.items()
            if _under(key, RESUME_IDENTITY_KEYS) and not _under(key, RESUME_FREE_KEYS)
        }

    trained, now = identity(stored), identity(current)
    for key in sorted(set(trained) | set(now)):
        if trained.get(key, "<unset>") != now.get(key, "<unset>"):
            raise ConfigError(
                f"{key}={now.get(key, '<unset>')!r} but ckpt_path={ckpt_path} was trained with "
                f"{trained.get(key, '<unset>')!r}: resume with the same value, or start a new run (a new run_name, "
                "ckpt_path=null)"
            )
