"""Generate the evaluation videos of a protocol with a trained model and write them as mp4 files.

Jobs (`prompts.PromptJob`) are generated `batch_size` at a time; the noise of a batch comes from one
generator seeded with the seed of its first job, so the videos depend on the batch size as well as on
`eval_protocol.seed`. Files are `00000.mp4, 00001.mp4, ...` (H.264, crf 18) plus `videos.csv` with each
file's prompt and seed, so the folder can be re-scored later with `generated_dir=<folder>`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange

from datamodules.mp4_encoding import encode_mp4
from modules.evaluation.prompts import PromptJob
from modules.evaluation.video_folder import write_manifest
from modules.runtime.sampling import seeded_generator
from modules.training.video_diffusion_module import VideoDiffusionModule

log = logging.getLogger(__name__)


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """`[T, C, H, W]` in [-1, 1] -> uint8 `[T, H, W, C]` (rounded, clipped)."""
    pixels = ((video.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "t c h w -> t h w c")


@torch.inference_mode()
def generate_videos(
    model: VideoDiffusionModule,
    jobs: Sequence[PromptJob],
    output_dir: str | Path,
    *,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    batch_size: int,
    device: torch.device,
) -> Path:
    """Generate one video per job into `output_dir`; returns the folder (with its `videos.csv`)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, int]] = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        videos = model.generate(
            [job.prompt for job in batch],
            num_frames=num_frames,
            height=height,
            width=width,
            generator=seeded_generator(batch[0].seed, device),
            progress=False,
        )
        for job, video in zip(batch, videos.cpu(), strict=True):
            name = f"{job.index:05d}.mp4"
            (folder / name).write_bytes(encode_mp4(video_to_uint8(video).numpy(), fps))
            rows.append((name, job.prompt, job.seed))
        log.info("generated %d / %d videos <eval_protocol.num_videos>", len(rows), len(jobs))
    write_manifest(folder, rows)
    return folder
