"""Sample videos from a trained model.

python sample.py prompt="a red circle moving left"                  # newest checkpoint under logs/train
python sample.py model=scvideo ckpt_path=run/checkpoints/last.ckpt prompts_file=prompts.txt seeds=[0,1,2,3] \
    batch_size=4 inference_precision=bf16                           # 4 videos per call, bf16 autocast
python sample.py ckpt_path=<ART-V run>/checkpoints/last.ckpt prompt="a panda playing guitar"  # its model
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
from modules.generation import GenerationRequest, GenerationResult, batches, seeded_generators
from modules.pos.pos_sampling import build_pos_generator
from modules.runtime.checkpoint_config import apply_checkpoint_config
from modules.runtime.config_checks import check_config, check_generation_options
from modules.runtime.precision import inference_precision
from modules.runtime.run_directory import register_resolvers
from modules.runtime.sampling import build_model_for_sampling, load_first_frame, read_prompts, video_filename

log = logging.getLogger("sample")
register_resolvers()


def sample(cfg: DictConfig) -> list[Path]:
    """Generate one video per (prompt, seed), or with `multi_prompt` one long video per seed, `batch_size` videos per
    call, each from its own seed's generator (so a video does not depend on the batch); write them as mp4 files and
    return their paths."""
    check_config(cfg)
    check_generation_options(cfg)  # what the net cannot do fails here, before any weights load
    L.seed_everything(cfg.seed)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "cpu"
    )
    precision = inference_precision(cfg)
    precision.check(device)
    prompts = read_prompts(cfg.get("prompt"), cfg.get("prompts_file"))
    model = build_model_for_sampling(cfg).to(device).eval()
    video_generator = build_pos_generator(cfg, model)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    first_frame = None
    if cfg.get("first_frame"):
        first_frame = load_first_frame(cfg.first_frame, cfg.resolution.height, cfg.resolution.width).to(
            device
        )
    multi_prompt = bool(cfg.get("multi_prompt"))
    # (file name, prompt) per video; a multi-prompt video runs through every prompt
    videos = [(f"multi {prompts[0]}", None)] if multi_prompt else [(prompt, prompt) for prompt in prompts]
    jobs = [(name, prompt, int(seed)) for name, prompt in videos for seed in cfg.seeds]
    written: list[Path] = []
    with precision.applied(device):
        for batch_index, batch in enumerate(batches(jobs, cfg.batch_size)):
            request = GenerationRequest(
                prompts=prompts if multi_prompt else [prompt for _, prompt, _ in batch],
                height=cfg.resolution.height,
                width=cfg.resolution.width,
                num_frames=None if multi_prompt else cfg.num_frames,
                frames_per_prompt=cfg.frames_per_prompt if multi_prompt else None,
                generators=seeded_generators([seed for _, _, seed in batch], device),
                first_frame=None if first_frame is None else first_frame.expand(len(batch), -1, -1, -1),
                return_masks=bool(cfg.get("save_mask")),
            )
            result = video_generator.generate(request)
            for index, (name, _, seed) in enumerate(batch):
                written += _write_outputs(result, index, name, seed, output_dir, cfg.fps)
            log.info(
                "wrote %s (batch %d, %d videos) <batch_size=%d>",
                written[-1],
                batch_index,
                len(batch),
                cfg.batch_size,
            )
    return written


def _write_outputs(
    result: GenerationResult, index: int, name: str, seed: int, output_dir: Path, fps: float
) -> list[Path]:
    """Video `index` of a result (and its mask video, when the result has masks) as mp4 files."""
    paths = [write_video(output_dir / video_filename(name, seed), result.video[index].cpu(), fps=fps)]
    if result.masks is not None:
        mask_path = output_dir / video_filename(name, seed, suffix="_mask.mp4")
        paths.append(write_video(mask_path, result.masks[index].cpu(), fps=fps))
    return paths


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(apply_checkpoint_config(cfg))  # the checkpoint's model and sampling defaults


if __name__ == "__main__":
    main()
