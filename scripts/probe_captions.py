"""Diffusion-classifier probe of a toy model: does its eps loss prefer the true colour / direction word?

    python scripts/probe_captions.py experiment=toy_scvideo ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python scripts/probe_captions.py experiment=toy_artv ckpt_path=... probe.num_clips=64

Reads `probe.num_clips` real validation clips of `data` (the experiment's), and writes `probe_results.json`
(colour and direction accuracy; chance 1/7 and 1/4) into the run directory. See
`modules/evaluation/caption_probe.py` for what it measures and why it complements sampling + `eval.py`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamodules.clip_batches import valid_samples
from modules.evaluation.caption_probe import caption_probe
from modules.runtime.checkpoint_config import apply_checkpoint_config
from modules.runtime.run_directory import register_resolvers
from modules.runtime.sampling import build_model_for_sampling

log = logging.getLogger("probe_captions")
register_resolvers()


def probe_batch(cfg: DictConfig) -> tuple[torch.Tensor, list[str]]:
    """The first `probe.num_clips` validation clips `[N, T, 3, H, W]` of `data` and their captions."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    videos, captions = [], []
    for batch in datamodule.val_dataloader():
        batch = valid_samples(batch)  # float [-1, 1], validation padding dropped
        videos.append(batch["video"])
        captions.extend(batch["caption"])
        if len(captions) >= cfg.probe.num_clips:
            break
    if len(captions) < cfg.probe.num_clips:
        raise ValueError(
            f"probe: the validation data holds {len(captions)} clips, fewer than probe.num_clips="
            f"{cfg.probe.num_clips} <probe.num_clips>"
        )
    return torch.cat(videos)[: cfg.probe.num_clips], captions[: cfg.probe.num_clips]


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, float]:
    cfg = apply_checkpoint_config(cfg)  # the checkpoint's model; the probe's clips still come from `data`
    model = build_model_for_sampling(cfg).eval()
    video, captions = probe_batch(cfg)
    result = caption_probe(
        model,
        video.to(model.device),
        captions,
        timesteps=list(cfg.probe.timesteps),
        noise_draws=cfg.probe.noise_draws,
        seed=cfg.probe.seed,
    )
    result["num_clips"] = len(captions)
    out = Path(cfg.paths.output_dir) / "probe_results.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("caption probe over %d clips: %s -> %s", len(captions), result, out)
    return result


if __name__ == "__main__":
    main()
