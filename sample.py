"""Sample videos from a trained model.

python sample.py prompt="a red circle moving left"                  # newest checkpoint of `make demo`
python sample.py model=scvideo ckpt_path=run/checkpoints/last.ckpt prompts_file=prompts.txt seeds=[0,1,2]
python sample.py model=artv experiment=artv_webvid ckpt_path=... prompt="a panda is playing guitar in the bar"
python sample.py model=scvideo prompt="a red circle moving left" sampler.init_noise=retrieval \
    pool=pool/index.safetensors rewriter=template                   # POS (modules/pos/README.md)
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from datamodules.mp4_encoding import write_video
from modules.pos.pos_sampling import build_pos_generator
from modules.runtime.config_checks import check_config
from modules.runtime.run_directory import register_resolvers
from modules.runtime.sampling import (
    build_model_for_sampling,
    load_first_frame,
    read_prompts,
    seeded_generator,
    video_filename,
)

log = logging.getLogger("sample")
register_resolvers()


def sample(cfg: DictConfig) -> list[Path]:
    """Generate one video per (prompt, seed) and write them as mp4 files; returns their paths."""
    check_config(cfg)
    L.seed_everything(cfg.seed)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "cpu"
    )
    model = build_model_for_sampling(cfg).to(device).eval()
    video_generator = build_pos_generator(cfg, model)
    prompts = read_prompts(cfg.get("prompt"), cfg.get("prompts_file"))
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    first_frame = None
    if cfg.get("first_frame"):
        first_frame = load_first_frame(cfg.first_frame, cfg.resolution.height, cfg.resolution.width).to(
            device
        )
    if cfg.get("multi_prompt") or first_frame is not None or cfg.get("save_mask"):
        return _sample_frame_by_frame(cfg, model, video_generator, prompts, first_frame, output_dir, device)
    written: list[Path] = []
    for prompt in prompts:
        for seed in cfg.seeds:
            video = video_generator.generate(
                [prompt],
                num_frames=cfg.num_frames,
                height=cfg.resolution.height,
                width=cfg.resolution.width,
                generator=seeded_generator(seed, device),
            )
            path = output_dir / video_filename(prompt, seed)
            write_video(path, video[0].cpu(), fps=cfg.fps)
            written.append(path)
            log.info("wrote %s", path)
    return written


def _sample_frame_by_frame(
    cfg, model, video_generator, prompts, first_frame, output_dir: Path, device
) -> list[Path]:
    """ART-V's modes: text+image-to-video (`first_frame`, without POS), multi-prompt long videos (`multi_prompt`)
    and mask videos (`save_mask`), the last two with or without POS."""
    if video_generator.uses_pos and first_frame is not None:
        raise ValueError(
            "POS (sampler.init_noise, rewriter) does not combine with a given first frame: drop first_frame, or "
            "use sampler.init_noise=gaussian rewriter=none <first_frame>"
        )
    # a given first frame goes to the model itself; otherwise the POS generator (plain sampling when POS is off)
    source, given = (
        (model, {"first_frame": first_frame}) if first_frame is not None else (video_generator, {})
    )
    written: list[Path] = []
    save_mask = bool(cfg.get("save_mask"))
    size = {"height": cfg.resolution.height, "width": cfg.resolution.width}
    for seed in cfg.seeds:
        options = {"generator": seeded_generator(seed, device), "return_masks": save_mask, **size, **given}
        if cfg.get("multi_prompt"):
            result = source.generate_multi_prompt(prompts, frames_per_prompt=cfg.frames_per_prompt, **options)
            written += _write_outputs(result, f"multi {prompts[0]}", seed, output_dir, cfg.fps, save_mask)
        else:
            for prompt in prompts:
                result = source.generate([prompt], num_frames=cfg.num_frames, **options)
                written += _write_outputs(result, prompt, seed, output_dir, cfg.fps, save_mask)
        log.info("wrote %s", written[-1])
    return written


def _write_outputs(result, name: str, seed: int, output_dir: Path, fps: float, with_mask: bool) -> list[Path]:
    """The video (and its mask video) of one generation as mp4 files."""
    video, masks = result if with_mask else (result, None)
    paths = [write_video(output_dir / video_filename(name, seed), video[0].cpu(), fps=fps)]
    if masks is not None:
        paths.append(
            write_video(output_dir / video_filename(name, seed, suffix="_mask.mp4"), masks[0].cpu(), fps=fps)
        )
    return paths


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
