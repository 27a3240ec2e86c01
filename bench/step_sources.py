"""What a training step costs by where its latents come from: video with every frame VAE-encoded (before frame
selection), video with only the frames the example reads encoded (after), and latent shards (nothing encoded).

    python -m bench.step_sources           # both paper models at reduced width on the CPU; writes `step_sources`
    python -m bench.step_sources --quick   # one timed step each, nothing written to docs/BENCHMARKS.md

Side by side in one run: SCVideo (`scvideo_webvid256`) and ART-V (`artv_webvid`) with the paper architectures at 1/8
width (UNets, the real AutoencoderKL layout, the text tower; bench/rehearsal_training.py), random weights, 16-frame
64-px clips, batch 2, fp32; seconds per step (forward, backward, AdamW, EMA) and multiply-accumulates per step
(torch.utils.flop_counter, FLOPs / 2) with the VAE's share. Then the arithmetic at paper size: VAE-encoder MACs per
frame at the paper resolution (counted on the meta device) times the frames a step encodes, against the denoiser's
forward + backward MACs per step.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from bench.rehearsal_training import (
    build_module,
    count_step_flops,
    randomize_zero_parameters,
    reduced_overrides,
)
from bench.report import default_doc_path, machine_description, utc_now, write_section
from bench.training_step import _optimizer, compose_train_config, synthetic_batch, training_step
from modules.artv.reference_frames import gather_frames
from modules.training.video_diffusion_module import VideoDiffusionModule

LOGGER = logging.getLogger("bench.step_sources")
SECTION = "step_sources"
EXPERIMENTS = ("scvideo_webvid256", "artv_webvid")
SOURCES = ("video, every frame encoded", "video, selected frames encoded", "latent shards")
BASE = ["trainer=a100x4", "backbone.pretrained=null", "paths.root_dir=.", "paths.output_dir=."]
CLIP_FRAMES = 16  # the papers' clip length (the rehearsal's 4 would leave ART-V nothing to skip)


def paper_config(experiment: str, reduced: bool) -> DictConfig:
    cfg = compose_train_config([f"experiment={experiment}", *BASE])
    if not reduced:
        return cfg
    reduced_clip = [*reduced_overrides(cfg), f"data.num_frames={CLIP_FRAMES}"]
    return compose_train_config([f"experiment={experiment}", *BASE, *reduced_clip])


def source_batch(module: VideoDiffusionModule, cfg: DictConfig, source: str) -> dict[str, Any]:
    """The batch a step of `source` sees; for "every frame" the module encodes whole clips and then picks the
    example's frames (the path before frame selection)."""
    batch = synthetic_batch(cfg, module.device)
    if source == SOURCES[0]:
        select = module.clip_latents

        def encode_every_frame(batch: dict[str, Any], frame_indices: torch.Tensor | None) -> torch.Tensor:
            latents = select(batch, None)
            return latents if frame_indices is None else gather_frames(latents, frame_indices)

        module.clip_latents = encode_every_frame
    if source == SOURCES[2]:
        moments = module.encode_moments(batch.pop("video"), None)  # what encode_latents stores
        batch["moments"] = moments.half()
    return batch


def vae_and_total_macs(module: VideoDiffusionModule, batch: dict[str, Any]) -> tuple[int, int]:
    """MACs of one loss + backward, and of them the first stage's (its forward only: it is frozen)."""
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        torch.manual_seed(0)
        module.diffusion_loss(batch).backward()
    module.zero_grad(set_to_none=True)
    # posterior_moments calls the encoder submodule directly: its class name is the counter's key
    vae = sum(counter.get_flop_counts().get(type(module.first_stage.encoder).__name__, {}).values())
    return vae // 2, counter.get_total_flops() // 2


def measure_source(experiment: str, source: str, steps: int) -> dict[str, Any]:
    cfg = paper_config(experiment, reduced=True)
    torch.manual_seed(0)
    module = build_module(cfg, "cpu", reduced=True).train()
    randomize_zero_parameters(module)
    batch = source_batch(module, cfg, source)
    vae_macs, total_macs = vae_and_total_macs(module, batch)
    optimizer = _optimizer(module)
    training_step(module, optimizer, batch, "fp32")  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        training_step(module, optimizer, batch, "fp32")
        times.append(time.perf_counter() - start)
    return {
        "experiment": experiment,
        "source": source,
        "median_s": statistics.median(times),
        "macs": total_macs,
        "vae_macs": vae_macs,
    }


def paper_arithmetic(experiment: str) -> dict[str, Any]:
    """VAE-encoder MACs per frame at paper size x frames encoded per step, and the denoiser's MACs per step."""
    cfg = paper_config(experiment, reduced=False)
    module = build_module(cfg, "meta", reduced=False)
    frame = torch.zeros(1, 3, cfg.resolution.height, cfg.resolution.width, device="meta")
    with FlopCounterMode(display=False) as counter:
        module.first_stage.posterior_moments(frame)
    per_frame = counter.get_total_flops() // 2
    batch, num_frames = cfg.data.batch_size, cfg.data.num_frames
    selected = 4 if experiment == "artv_webvid" else num_frames  # ART-V: anchor, two references, target
    net_macs = count_step_flops(cfg, reduced=False, checkpointing=False)["net"] // 2
    return {
        "experiment": experiment,
        "resolution": cfg.resolution.height,
        "batch": batch,
        "vae_per_frame": per_frame,
        "frames_before": batch * num_frames,
        "frames_after": batch * selected,
        "net_macs": net_macs,
    }


def _g(macs: float) -> str:
    return f"{macs / 1e9:,.1f} G" if macs < 1e12 else f"{macs / 1e12:,.2f} T"


def markdown(results: list[dict[str, Any]], paper: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## Training step by data source (bench/step_sources.py)",
        "",
        f"{utc_now()}; `{command}`; {machine_description()}.",
        "",
        f"Reduced width (1/8), {CLIP_FRAMES} frames at 64 px, batch 2, fp32, random weights, median of 5 steps; "
        "MACs of loss + backward.",
        "",
        "| model | latents from | s / step | vs every frame | MACs / step | VAE share |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        base = next(
            r for r in results if r["experiment"] == result["experiment"] and r["source"] == SOURCES[0]
        )
        lines.append(
            f"| {result['experiment']} | {result['source']} | {result['median_s']:.3f} | "
            f"{base['median_s'] / result['median_s']:.2f}x | {_g(result['macs'])} | "
            f"{result['vae_macs'] / result['macs']:.0%} |"
        )
    lines += [
        "",
        "At paper size (per optimizer step of one GPU; VAE encoder only, the denoiser's forward + backward):",
        "",
        "| model | px | VAE MACs / frame | frames encoded before -> after | VAE MACs before -> after | denoiser MACs "
        "| VAE share before -> after -> latent shards |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in paper:
        before, after = (
            row["vae_per_frame"] * row["frames_before"],
            row["vae_per_frame"] * row["frames_after"],
        )
        net = row["net_macs"]
        lines.append(
            f"| {row['experiment']} | {row['resolution']} | {_g(row['vae_per_frame'])} | {row['frames_before']} -> "
            f"{row['frames_after']} | {_g(before)} -> {_g(after)} | {_g(net)} | {before / (before + net):.0%} -> "
            f"{after / (after + net):.0%} -> 0% |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="one timed step each; write to a temporary document"
    )
    parser.add_argument(
        "--no-paper", action="store_true", help="skip the paper-size arithmetic (meta device)"
    )
    parser.add_argument("--doc", default=None, help="the document to write (default docs/BENCHMARKS.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    steps = 1 if args.quick else 5
    results = []
    for experiment in EXPERIMENTS:
        for source in SOURCES:
            results.append(measure_source(experiment, source, steps))
            LOGGER.info("%s, %s: %.3f s / step", experiment, source, results[-1]["median_s"])
    paper = [] if args.no_paper else [paper_arithmetic(experiment) for experiment in EXPERIMENTS]
    command = "python -m bench.step_sources" + (" --quick" if args.quick else "")
    doc = default_doc_path(args.quick) if args.doc is None else args.doc
    write_section(Path(doc), SECTION, markdown(results, paper, command))
    LOGGER.info("wrote the %s section of %s", SECTION, doc)
    return results


if __name__ == "__main__":
    main()
