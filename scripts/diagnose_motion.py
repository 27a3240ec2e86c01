"""Motion diagnostics of a toy SCVideo checkpoint: where the direction word is used, whether the temporal layers
learnt and read it, and when sampling commits to a direction (modules/evaluation/motion_diagnostics.py).

    python scripts/diagnose_motion.py experiment=toy_scvideo ckpt_path=<run>/checkpoints/last.ckpt

Writes `motion_diagnostics.json` into the run directory and prints the tables (markdown) for
docs/experiments/.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_captions import probe_batch

from datamodules.toy_shapes import COLORS, DIRECTIONS, SHAPES, toy_caption
from modules.evaluation.motion_diagnostics import (
    direction_commitment,
    noisy_clip_readability,
    probe_by_timestep,
    temporal_layer_report,
)
from modules.runtime.run_directory import register_resolvers
from modules.runtime.sampling import build_model_for_sampling

log = logging.getLogger("diagnose_motion")
register_resolvers()

PROBE_STEPS = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
REPORT_STEPS = (500, 900)
READABILITY_STEPS = (300, 500, 700, 850, 950, 999)


def commitment_captions(count: int) -> list[str]:
    """`count` toy captions cycling through the directions, colours and shapes."""
    colors, shapes = list(COLORS), list(SHAPES)
    return [
        toy_caption(
            colors[i % len(colors)], shapes[(i // 4) % len(shapes)], list(DIRECTIONS)[i % len(DIRECTIONS)]
        )
        for i in range(count)
    ]


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    torch.set_grad_enabled(False)
    model = build_model_for_sampling(cfg).eval()
    video, captions = probe_batch(cfg)
    video = video.to(model.device)
    probe = {
        attribute: [asdict(row) for row in probe_by_timestep(model, video, captions, attribute, PROBE_STEPS)]
        for attribute in ("direction", "color")
    }
    first_frame_step = cfg.probe.get("first_frame_step")
    if first_frame_step is not None:
        probe["direction_first_frame_led"] = [
            asdict(row)
            for row in probe_by_timestep(
                model, video, captions, "direction", PROBE_STEPS, first_frame_step=int(first_frame_step)
            )
        ]
    layers = {str(step): temporal_layer_report(model, video, captions, step) for step in REPORT_STEPS}
    steps = len(model.sampler.timesteps())
    switches = sorted({0, 1, 2, 3, 5, 8, 12, steps})
    commitment = direction_commitment(
        model,
        commitment_captions(16),
        switches,
        num_frames=cfg.data.num_frames,
        height=cfg.resolution.height,
        width=cfg.resolution.width,
    )
    first_stage = model.first_stage
    readability = noisy_clip_readability(
        model.schedule.alphas_cumprod_f64,
        READABILITY_STEPS,
        scale=float(first_stage.scale_factor),
        shift=float(first_stage.shift_factor),
        size=cfg.resolution.height,
        num_frames=cfg.data.num_frames,
        start=cfg.data.toy_shards.start,
        travel_fraction=tuple(cfg.data.toy_shards.travel_fraction),
    )
    result = {
        "readability": readability,
        "probe": probe,
        "temporal_layers": layers,
        "commitment": commitment,
        "sampler_steps": steps,
    }
    out = Path(cfg.paths.output_dir) / "motion_diagnostics.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| t | ideal observer: direction | colour |\n|---|---|---|")
    for row in readability:
        print(f"| {row['timestep']} | {row['direction_accuracy']:.0%} | {row['color_accuracy']:.0%} |")
    print("\n| t | direction acc | direction gap | colour acc | colour gap |\n|---|---|---|---|---|")
    for d, c in zip(probe["direction"], probe["color"], strict=True):
        print(
            f"| {d['timestep']} | {d['accuracy']:.0%} | {d['relative_gap']:+.4f} | {c['accuracy']:.0%} | "
            f"{c['relative_gap']:+.4f} |"
        )
    if first_frame_step is not None:
        print(
            f"\nfirst frame at step {first_frame_step}, loss over the other frames\n"
            "| t | direction acc | direction gap |\n|---|---|---|"
        )
        for row in probe["direction_first_frame_led"]:
            print(f"| {row['timestep']} | {row['accuracy']:.0%} | {row['relative_gap']:+.4f} |")
    for step, report in layers.items():
        print(f"\nt = {step}\n| layer | movement | contribution | direction sensitivity |\n|---|---|---|---|")
        for name, row in report.items():
            print(
                f"| {name} | {row['movement']:.3f} | {row['contribution']:.3f} | {row['direction_sensitivity']:.3f} |"
            )
    print(
        f"\n| caption for the first k of {steps} steps | first | second | median displacement |\n|---|---|---|---|"
    )
    for row in commitment:
        print(
            f"| {row['switch_after']} | {row['first']:.0%} | {row['second']:.0%} | {row['median_displacement']:.3f} |"
        )
    log.info("wrote %s", out)
    return result


if __name__ == "__main__":
    main()
