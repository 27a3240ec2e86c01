"""Seconds per 16-frame ART-V video with condition caching off and on, and the share of the time each cached part
saves (modules/artv/prepared_conditions.py, `model.net.cache_conditions`).

ART-V generates a video frame by frame, each frame a full sampler run: DPM++ 2S ancestral, 50 steps of two network
evaluations each, every evaluation one batch of eq. (1)'s four condition variants (ART-V supplementary, Inference).
Uncached, every evaluation runs both T2I-Adapters on the reference rows and projects the text and anchor tokens to
keys and values in every cross-attention. Cached, the adapters run once a frame and the projections once a video.
This benchmark generates the same video (same seed, random weights) with

    off               nothing cached (every evaluation computes everything)
    per_frame         the variant batch and both adapters' features once a frame
    per_frame+text    ... and the text keys / values of every text cross-attention once a video
    per_frame+anchor  ... and the anchor tokens and their keys / values in every anchor block once a video
    on                everything (the default)

side by side in one process, and reports seconds per video, the speed-up of `on` over `off`, each part's share of
the `off` time (per_frame: off - per_frame; text: per_frame - per_frame+text; anchor: per_frame - per_frame+anchor),
and the largest difference of each video from the `off` one. Times are the process's CPU seconds
(`time.process_time`: with one torch thread, the work done, hardly moved by other jobs on a shared machine) next to
wall seconds; speed-ups and shares come from the CPU seconds. Next to the times: the share of one eq. (1)
evaluation's multiply-accumulates that each part removes, at the measured size and at paper size (bench/flops.py's
counters on the meta device), since at reduced width the text projections (context width 1024, not reduced) weigh
far more than at paper size.

Batching, side by side in the same run: "4 prompts in one call vs 4 calls" for both models, SCVideo
(`experiment=scvideo_webvid256`: DDIM, CFG 10) and ART-V (DPM++ 2S ancestral, eq. (1)), at the same reduced width and
size (SCVideo reduced alike: SD 1.4's widths divided, 8 heads kept): seconds for the four videos each way, the ratio,
and the largest difference between a video of the batch and the same video made alone (per-video generators,
modules/generation.py). With a GPU (`torch.cuda.is_available()`) the batching runs there, and the one-call batch is
also timed in bf16 autocast against float32 (`inference_precision`, modules/runtime/precision.py).

CPU: the paper architectures (`experiment=artv_webvid`) at 1/8 width (bench/inference_table2.py's reduction: every
channel and attention width divided, GroupNorm groups 32 -> 4) at 128 px, the stand-in of Table 2's 320 px column;
float32, one video (batch 1), 77 x 1024 text tokens.

    python -m bench.sampling            # writes its two sections of docs/BENCHMARKS.md
    python -m bench.sampling --part batching --steps 10 --threads 1   # only the batching section
    python -m bench.sampling --quick    # smoke run (64 px, 2 frames, 2 steps) into a temporary document
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from bench import flops, inference_table2
from bench.report import (
    default_doc_path,
    load_average,
    machine_description,
    markdown_table,
    utc_now,
    write_section,
)
from modules.artv.anchor_attention import anchor_tokens
from modules.artv.artv_denoiser import ARTVDenoiser
from modules.artv.prepared_conditions import ConditionCaching
from modules.artv.reference_frames import NUM_REFERENCE_FRAMES
from modules.blocks.attention import attention_backend
from modules.diffusion.guidance import ClassifierFreeGuidance, Guidance
from modules.diffusion.samplers import DDIMSampler, DPMPP2SAncestralSampler, Sampler
from modules.generation import LatentRequest, seeded_generators
from modules.runtime.precision import InferencePrecision
from modules.scvideo.scvideo_denoiser import SCVideoDenoiser
from modules.video_denoiser import VideoDenoiser

LOGGER = logging.getLogger("bench.sampling")
SECTION = "sampling"
BATCHING_SECTION = "sampling_batching"
PARTS = ("caching", "batching")
SETTINGS = {
    "off": ConditionCaching.switch(False),
    "per_frame": ConditionCaching(per_frame=True, text=False, anchor=False),
    "per_frame+text": ConditionCaching(per_frame=True, text=True, anchor=False),
    "per_frame+anchor": ConditionCaching(per_frame=True, text=False, anchor=True),
    "on": ConditionCaching.switch(True),
}
# measured in this order in every repeat: the two ends first, then the parts
ORDER = ("off", "on", "per_frame", "per_frame+text", "per_frame+anchor")
PAPER_RESOLUTION = 320  # Table 2's first column
BATCH_PROMPTS = 4  # "4 prompts in one call vs 4 calls"
BATCH_MODELS = ("scvideo", "artv")
SCVIDEO_CFG_SCALE = 10.0  # SCVideo appendix, Sampling
SCVIDEO_TEXT_DIM = 768  # CLIP ViT-L/14 (SD 1.4)
QUICK = {"resolution": 64, "frames": 2, "steps": 2}


@dataclass(frozen=True)
class Setup:
    """What one run measures: `frames` frames of `resolution` px (latents / 8), `steps` sampler steps, every channel
    width divided by `width_divisor`, `repeats` timed videos per setting (median), `threads` torch threads."""

    resolution: int
    frames: int
    steps: int
    width_divisor: int
    repeats: int
    threads: int


# ---- measuring ------------------------------------------------------------------------------------------
def build_artv(width_divisor: int, device: str) -> ARTVDenoiser:
    """The paper's ART-V denoiser (random weights) at 1/`width_divisor` width, in eval mode."""
    return inference_table2.build_network("artv", width_divisor, device).eval()


def generate_video(net: ARTVDenoiser, guidance: Guidance, setup: Setup, setting: ConditionCaching) -> Tensor:
    """One seeded text-to-video run with caching `setting`: latents `[1, C, frames, h, w]`."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(1, flops.TEXT_TOKENS, flops.TEXT_DIM, generator=generator)
    null_text = torch.randn(1, flops.TEXT_TOKENS, flops.TEXT_DIM, generator=generator)
    sampler = DPMPP2SAncestralSampler(net.schedule, num_steps=setup.steps, progress=False)
    net.condition_caching = setting
    return net.generate(sampler, guidance, latent_request(setup, text, null_text, [1], "cpu")).latents


def measure_times(setup: Setup) -> dict[str, dict[str, Any]]:
    """CPU and wall seconds per video for every setting (medians of `repeats`), and each video's largest difference
    from `off`."""
    torch.set_num_threads(setup.threads)
    torch.manual_seed(0)
    net = build_artv(setup.width_divisor, "cpu")
    guidance = inference_table2.eq1_guidance()
    warm_up = Setup(**{**setup.__dict__, "frames": 2, "steps": 1})
    cpu_times: dict[str, list[float]] = {name: [] for name in ORDER}
    wall_times: dict[str, list[float]] = {name: [] for name in ORDER}
    videos: dict[str, Tensor] = {}
    with torch.no_grad(), attention_backend("sdpa"):
        generate_video(net, guidance, warm_up, SETTINGS["on"])
        for repeat in range(setup.repeats):
            for name in ORDER:
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                videos[name] = generate_video(net, guidance, setup, SETTINGS[name])
                cpu_times[name].append(time.process_time() - cpu_start)
                wall_times[name].append(time.perf_counter() - wall_start)
                LOGGER.info(
                    "repeat %d, %-16s %.2f CPU s (%.2f s wall) per video",
                    repeat,
                    name,
                    cpu_times[name][-1],
                    wall_times[name][-1],
                )
    return {
        name: {
            "seconds": statistics.median(cpu_times[name]),
            "cpu_times_s": cpu_times[name],
            "wall_seconds": statistics.median(wall_times[name]),
            "wall_times_s": wall_times[name],
            "max_abs_difference": float((videos[name] - videos["off"]).abs().max()),
        }
        for name in ORDER
    }


def build_scvideo(width_divisor: int, device: str) -> SCVideoDenoiser:
    """The paper's SCVideo denoiser (`experiment=scvideo_webvid256`, SD 1.4 inflated; random weights) at
    1/`width_divisor` width, reduced as bench/inference_table2.py reduces ART-V (widths divided, SD 1.4's 8 heads
    kept, GroupNorm groups 32 -> 32 / divisor), in eval mode."""
    channels = OmegaConf.load(flops.CONF_DIR / "backbone" / "sd14.yaml").unet.model_channels
    if channels % width_divisor:
        raise ValueError(f"width divisor {width_divisor} does not divide SD 1.4's {channels} channels")
    overrides = [
        "experiment=scvideo_webvid256",
        "backbone.pretrained=null",
        f"backbone.unet.model_channels={channels // width_divisor}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(flops.CONF_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
    groups = 32 // width_divisor
    with inference_table2.group_norm_groups(groups), torch.device(device):
        return instantiate(cfg.model.net).eval()


def batching_case(model: str, setup: Setup, device: str) -> tuple[VideoDenoiser, Sampler, Guidance, int]:
    """The model's reduced denoiser, its paper sampler and guidance, and its text width."""
    if model == "scvideo":
        net = build_scvideo(setup.width_divisor, device)
        sampler = DDIMSampler(net_schedule(), num_steps=max(setup.steps, 2), progress=False)
        return net, sampler, ClassifierFreeGuidance(SCVIDEO_CFG_SCALE), SCVIDEO_TEXT_DIM
    net = build_artv(setup.width_divisor, device)
    sampler = DPMPP2SAncestralSampler(net.schedule, num_steps=setup.steps, progress=False)
    return net, sampler, inference_table2.eq1_guidance(), flops.TEXT_DIM


def net_schedule() -> Any:
    """The SD linear schedule both papers use (conf/schedule/sd_linear.yaml)."""
    return instantiate(OmegaConf.load(flops.CONF_DIR / "schedule" / "sd_linear.yaml"))


def latent_request(
    setup: Setup, text: Tensor, null_text: Tensor, seeds: list[int], device: str
) -> LatentRequest:
    size = setup.resolution // flops.LATENT_FACTOR
    return LatentRequest(
        texts=[text.to(device)],
        null_text=null_text.to(device),
        num_frames=setup.frames,
        latent_size=(size, size),
        generators=seeded_generators(seeds, device),
        progress=False,
    )


def _timed(run: Any, device: str) -> tuple[Tensor, float, float]:
    """(result, CPU seconds, wall seconds) of `run()`, the device synchronised."""
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    result = run()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.process_time() - cpu_start, time.perf_counter() - wall_start


def measure_batching(setup: Setup, device: str) -> dict[str, dict[str, Any]]:
    """Per model (`batching_of`): BATCH_PROMPTS videos in one call against one call each."""
    torch.set_num_threads(setup.threads)
    return {model: batching_of(model, setup, device) for model in BATCH_MODELS}


def batching_of(model: str, setup: Setup, device: str) -> dict[str, Any]:
    """CPU and wall seconds for BATCH_PROMPTS videos generated in one call and in one call each, the largest
    difference between a video of the batch and the video made alone; on CUDA also the one call in bf16."""
    torch.manual_seed(0)
    net, sampler, guidance, text_dim = batching_case(model, setup, device)
    generator = torch.Generator().manual_seed(0)
    texts = torch.randn(BATCH_PROMPTS, flops.TEXT_TOKENS, text_dim, generator=generator)
    null_text = torch.randn(1, flops.TEXT_TOKENS, text_dim, generator=generator)
    seeds = list(range(BATCH_PROMPTS))

    def generate(rows: slice, precision: str = "fp32", size: Setup = setup) -> Tensor:
        request = latent_request(size, texts[rows], null_text, seeds[rows], device)
        with InferencePrecision(precision).applied(torch.device(device)):
            return net.generate(sampler, guidance, request).latents.float()

    def separate_calls() -> Tensor:
        return torch.cat([generate(slice(i, i + 1)) for i in seeds])

    with torch.no_grad(), attention_backend("sdpa"):
        generate(slice(0, 1), size=Setup(**{**setup.__dict__, "frames": 1, "steps": 2}))  # warm-up
        separate, separate_cpu, separate_wall = _timed(separate_calls, device)
        batched, batched_cpu, batched_wall = _timed(lambda: generate(slice(None)), device)
        result = {
            "separate_seconds": separate_cpu,
            "batched_seconds": batched_cpu,
            "separate_wall_seconds": separate_wall,
            "batched_wall_seconds": batched_wall,
            "max_abs_difference": float((batched - separate).abs().max()),
        }
        if device == "cuda":
            half, _, half_wall = _timed(lambda: generate(slice(None), precision="bf16"), device)
            result["bf16_wall_seconds"] = half_wall
            result["bf16_max_abs_difference"] = float((half - batched).abs().max())
    LOGGER.info(
        "%s: %d videos in %d calls %.2f CPU s (%.2f s wall), in one call %.2f CPU s (%.2f s wall)",
        model,
        BATCH_PROMPTS,
        BATCH_PROMPTS,
        separate_cpu,
        separate_wall,
        batched_cpu,
        batched_wall,
    )
    return result


def part_macs(net: ARTVDenoiser, resolution: int, num_variants: int) -> dict[str, int]:
    """Multiply-accumulates (conv + linear + attention) of one eq. (1) evaluation of one video, `num_variants` rows,
    and of what caching takes out of it: both adapters on the reference rows, the text keys / values of every text
    cross-attention, the anchor tokens' keys / values in every anchor block (meta tensors)."""
    size = resolution // flops.LATENT_FACTOR
    channels = net.latent_channels
    counts: dict[str, int] = {}
    with torch.device("meta"), torch.no_grad():
        x_t = torch.empty(num_variants, channels, size, size)
        text = torch.empty(num_variants, flops.TEXT_TOKENS, flops.TEXT_DIM)
        reference = torch.empty(num_variants, (NUM_REFERENCE_FRAMES + 1) * channels, size, size)
        anchor = torch.empty(num_variants, channels, size, size)
        cond = {"text": text, "reference": reference, "anchor": anchor}
        with flops.counting_macs(net) as count:
            net(x_t, torch.zeros(num_variants, dtype=torch.int64), cond)
        counts["evaluation"] = count.total
        adapter_input = reference[:, : NUM_REFERENCE_FRAMES * channels]
        with flops.counting_macs(net) as count:
            net.dynamic_adapter(adapter_input)
            net.mask_adapter(adapter_input)
        counts["per_frame"] = count.total
        with flops.counting_macs(net) as count:
            for layer in net.text_attentions():
                layer.project_context(text)
        counts["text"] = count.total
        tokens = anchor_tokens(anchor, net.anchor_patch_size)
        with flops.counting_macs(net) as count:
            for layer in net.anchor_attentions():
                layer.project_context(tokens)
        counts["anchor"] = count.total
    return counts


def measure_macs(setup: Setup, quick: bool) -> dict[str, dict[str, int]]:
    """`part_macs` at the measured size, and at paper size (full width, 320 px) unless `quick`."""
    num_variants = 1 + len(inference_table2.eq1_guidance().active_weights)
    sizes = {"measured": (setup.width_divisor, setup.resolution)}
    if not quick:
        sizes["paper"] = (1, PAPER_RESOLUTION)
    return {
        name: part_macs(build_artv(divisor, "meta"), resolution, num_variants)
        for name, (divisor, resolution) in sizes.items()
    }


# ---- reporting ------------------------------------------------------------------------------------------
def part_shares(times: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Share of the `off` time each part saves, measured by enabling it alone on top of what it needs."""
    off = times["off"]["seconds"]
    per_frame = times["per_frame"]["seconds"]
    return {
        "per_frame": (off - per_frame) / off,
        "text": (per_frame - times["per_frame+text"]["seconds"]) / off,
        "anchor": (per_frame - times["per_frame+anchor"]["seconds"]) / off,
        "on": (off - times["on"]["seconds"]) / off,
    }


def summary_line(times: dict[str, dict[str, Any]]) -> str:
    shares = part_shares(times)
    return (
        f"sampling: {times['off']['seconds']:.1f} CPU s per video uncached, {times['on']['seconds']:.1f} cached "
        f"({times['off']['seconds'] / times['on']['seconds']:.2f}x); saved: per_frame {100 * shares['per_frame']:.1f} %, "
        f"text {100 * shares['text']:.1f} %, anchor {100 * shares['anchor']:.1f} %"
    )


def markdown_section(
    setup: Setup,
    times: dict[str, dict[str, Any]],
    macs: dict[str, dict[str, int]],
    command: str,
    machine: str,
) -> str:
    shares = part_shares(times)
    off = times["off"]["seconds"]
    time_rows = [
        [
            name,
            f"{times[name]['seconds']:.1f}",
            f"{off / times[name]['seconds']:.2f}x",
            f"{times[name]['wall_seconds']:.1f}",
            f"{times['off']['wall_seconds'] / times[name]['wall_seconds']:.2f}x",
            f"{times[name]['max_abs_difference']:.1e}",
        ]
        for name in ORDER
    ]
    part_rows = []
    for part, what in (
        ("per_frame", "variant batch + both adapters, once a frame"),
        ("text", "text K/V of every text cross-attention, once a video"),
        ("anchor", "anchor tokens + K/V of every anchor block, once a video"),
    ):
        mac_shares = [
            f"{100 * macs[size][part] / macs[size]['evaluation']:.1f} %"
            for size in ("measured", "paper")
            if size in macs
        ]
        part_rows.append([part, what, f"{100 * shares[part]:.1f} %", *mac_shares])
    size_header = ["share of an eq. (1) evaluation's MACs, measured size"]
    if "paper" in macs:
        size_header.append("... at paper size (320 px, full width)")
    return "\n".join(
        [
            "## ART-V sampling with and without condition caching (bench/sampling.py)",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            f"- Setting: CPU, the paper architectures (`experiment=artv_webvid`, random weights) at 1/{setup.width_divisor} "
            f"width (every channel and attention width divided, GroupNorm groups 32 -> {32 // setup.width_divisor}), "
            f"text-to-video of one {setup.frames}-frame video at {setup.resolution} px "
            f"({setup.resolution // flops.LATENT_FACTOR}x{setup.resolution // flops.LATENT_FACTOR} latents), DPM++ 2S "
            f"ancestral with {setup.steps} steps, eq. (1) guidance (w_ref 0.25, w_anc 0.25, w_txt 6.5: four variants "
            f"per evaluation, two for the text-only frame 0), {flops.TEXT_TOKENS} x {flops.TEXT_DIM} text tokens, "
            f"float32, SDPA attention, {setup.threads} torch thread(s); the settings run one after another in one "
            f"process, {setup.repeats} video(s) each (median), after one short warm-up video. Load average when the "
            f"bench ended: {load_average()}.",
            "- Times: CPU seconds of the process (`time.process_time`; with one torch thread the work done, hardly "
            "moved by other jobs on the machine) and wall seconds; speed-ups and shares from the CPU seconds.",
            "- Part shares: per_frame = (off - per_frame) / off; text = (per_frame - per_frame+text) / off; anchor = "
            "(per_frame - per_frame+anchor) / off (text and anchor caching build on the per-frame batch). The MAC "
            "shares count what a part removes from every evaluation (conv + linear + attention MACs, bench/flops.py); "
            "at reduced width the text projections weigh more than at paper size, because the text width (1024) is "
            "not reduced.",
            "- `max abs difference`: the largest difference of the video's latents from the uncached video (same "
            "seed): caching changes no result.",
            "",
            *markdown_table(
                [
                    "caching",
                    "CPU s per video",
                    "speed-up over off",
                    "wall s per video",
                    "wall speed-up",
                    "max abs difference",
                ],
                time_rows,
            ),
            "",
            *markdown_table(["part", "cached", "share of the off time saved", *size_header], part_rows),
            "",
            f"All parts together save {100 * shares['on']:.1f} % of the uncached CPU time: "
            f"{off / times['on']['seconds']:.2f}x ({times['off']['wall_seconds'] / times['on']['wall_seconds']:.2f}x "
            "wall).",
        ]
    )


def batching_section(
    setup: Setup, batching: dict[str, dict[str, Any]], device: str, command: str, machine: str
) -> list[str]:
    """The batching section (and, measured on a GPU, bf16 against float32) as markdown lines."""
    rows = [
        [
            model,
            f"{result['separate_seconds']:.2f}",
            f"{result['batched_seconds']:.2f}",
            f"{result['separate_seconds'] / result['batched_seconds']:.2f}x",
            f"{result['separate_wall_seconds']:.2f}",
            f"{result['batched_wall_seconds']:.2f}",
            f"{result['separate_wall_seconds'] / result['batched_wall_seconds']:.2f}x",
            f"{result['max_abs_difference']:.1e}",
        ]
        for model, result in batching.items()
    ]
    lines = [
        f"## Sampling {BATCH_PROMPTS} prompts in one call vs {BATCH_PROMPTS} calls (bench/sampling.py)",
        "",
        f"- Date: {utc_now()}",
        f"- Machine: {machine}",
        f"- Command: `{command}`",
        f"- Setting: {device.upper()}, both paper architectures at 1/{setup.width_divisor} width (SCVideo: "
        f"`experiment=scvideo_webvid256`, DDIM with CFG {SCVIDEO_CFG_SCALE:g}, {SCVIDEO_TEXT_DIM}-wide text; ART-V as "
        f"above), {BATCH_PROMPTS} text-to-video videos of {setup.frames} frames at {setup.resolution} px, "
        f"{setup.steps} sampler steps (DDIM: at least 2), float32 (TF32 allowed on a GPU), one seeded generator per "
        "video (modules/generation.py), after one short warm-up video.",
        "- `max abs difference`: the largest difference of a video's latents in the batch from the same video made "
        "alone: batching changes no video beyond float32 rounding.",
        "",
        *markdown_table(
            [
                "model",
                f"{BATCH_PROMPTS} calls, CPU s",
                "one call, CPU s",
                "ratio",
                f"{BATCH_PROMPTS} calls, wall s",
                "one call, wall s",
                "wall ratio",
                "max abs difference",
            ],
            rows,
        ),
    ]
    if device == "cuda":
        precision_rows = [
            [
                model,
                f"{result['batched_wall_seconds']:.2f}",
                f"{result['bf16_wall_seconds']:.2f}",
                f"{result['batched_wall_seconds'] / result['bf16_wall_seconds']:.2f}x",
                f"{result['bf16_max_abs_difference']:.1e}",
            ]
            for model, result in batching.items()
        ]
        lines += [
            "",
            f"bf16 autocast against float32 (`inference_precision`), the one-call batch of {BATCH_PROMPTS} videos:",
            "",
            *markdown_table(
                ["model", "fp32 wall s", "bf16 wall s", "speed-up", "max abs difference of the latents"],
                precision_rows,
            ),
        ]
    return lines


# ---- command line ---------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=128, help="pixels (latents / 8); default 128")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (Table 2: 16)")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (ART-V supplementary: 50)")
    parser.add_argument(
        "--width-divisor", type=int, default=8, choices=(1, 2, 4, 8), help="divide every channel count"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed videos per setting (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, 2 frames, 2 steps")
    parser.add_argument(
        "--part",
        choices=(*PARTS, "all"),
        default="all",
        help="measure only caching or only batching (each writes its own section); default both",
    )
    parser.add_argument(
        "--doc", type=Path, default=None, help="document to update (default: docs/BENCHMARKS.md)"
    )
    parser.add_argument("--no-write", action="store_true", help="only log the results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = (
        QUICK if args.quick else {"resolution": args.resolution, "frames": args.frames, "steps": args.steps}
    )
    setup = Setup(**sizes, width_divisor=args.width_divisor, repeats=args.repeats, threads=args.threads)
    machine = machine_description(args.threads)
    parts = PARTS if args.part == "all" else (args.part,)
    times = measure_times(setup) if "caching" in parts else None
    macs = measure_macs(setup, args.quick) if "caching" in parts else None
    batching_device = "cuda" if torch.cuda.is_available() else "cpu"
    batching = measure_batching(setup, batching_device) if "batching" in parts else None
    if times is not None:
        LOGGER.info(summary_line(times))
    if not args.no_write:
        doc = args.doc or default_doc_path(args.quick)
        command = " ".join(["python -m bench.sampling", *argv])
        if times is not None:
            write_section(doc, SECTION, markdown_section(setup, times, macs, command, machine))
            LOGGER.info("wrote the %s section of %s", SECTION, doc)
        if batching is not None:
            lines = batching_section(setup, batching, batching_device, command, machine)
            write_section(doc, BATCHING_SECTION, "\n".join(lines))
            LOGGER.info("wrote the %s section of %s", BATCHING_SECTION, doc)
    return {
        "setup": setup,
        "times": times,
        "macs": macs,
        "shares": part_shares(times) if times is not None else None,
        "batching": batching,
    }


if __name__ == "__main__":
    main()
