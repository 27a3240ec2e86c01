"""Generate the evaluation videos of a protocol with a trained model and write them as mp4 files.

Jobs (`prompts.PromptJob`) are generated `batch_size` at a time, as sample.py batches them: each video draws its
noise from its own generator seeded with its job's seed, so a video depends on its job alone, not on the batch
size (modules/generation.py). Files are `00000.mp4, 00001.mp4, ...` (H.264, crf 18) plus `videos.csv` with each
file's prompt and seed, so the folder can be re-scored later with `generated_dir=<folder>`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.mp4_encoding import write_video
from modules.evaluation.prompts import PromptJob
from modules.evaluation.video_folder import MANIFEST_NAME, write_manifest
from modules.generation import GenerationRequest, batches, seeded_generators
from modules.runtime.precision import InferencePrecision
from modules.training.video_diffusion_module import VideoDiffusionModule

log = logging.getLogger(__name__)


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
    precision: InferencePrecision | None = None,
) -> Path:
    """Generate one video per job into `output_dir`, at `precision` (default fp32); returns the folder (with its
    `videos.csv`).

    Resumable: files are written atomically and the manifest is rewritten after every batch, so an interrupted
    run keeps what it made, and a batch whose files all exist is not generated again (a video's noise depends
    only on its job, so the skipped videos are the ones this run would have made).
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    finished = _finished_videos(folder)
    rows: list[tuple[str, str, int]] = []
    for batch in batches(jobs, batch_size):
        names = [f"{job.index:05d}.mp4" for job in batch]
        done = all(
            (folder / name).is_file() and finished.get(name) == (job.prompt, job.seed)
            for name, job in zip(names, batch, strict=True)
        )
        if not done:
            request = GenerationRequest(
                prompts=[job.prompt for job in batch],
                height=height,
                width=width,
                num_frames=num_frames,
                generators=seeded_generators([job.seed for job in batch], device),
                progress=False,
            )
            with (precision or InferencePrecision()).applied(device):
                videos = model.generate(request).video
            for name, video in zip(names, videos.cpu(), strict=True):
                write_video(folder / name, video, fps)
        rows.extend((name, job.prompt, job.seed) for name, job in zip(names, batch, strict=True))
        write_manifest(folder, rows)
        log.info("generated %d / %d videos <eval_protocol.num_videos>", len(rows), len(jobs))
    return folder


def _finished_videos(folder: Path) -> dict[str, tuple[str, int]]:
    """`file -> (prompt, seed)` of the videos an earlier run recorded in the manifest; a file whose prompt or seed
    differs from the current job (another protocol, another num_videos) is generated again."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return {}
    with manifest.open(newline="", encoding="utf-8") as handle:
        return {row["file"]: (row["prompt"], int(row["seed"])) for row in csv.DictReader(handle)}
