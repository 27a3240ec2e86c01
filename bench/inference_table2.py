"""Inference throughput and peak memory of ART-V next to a ModelScope-style 3D UNet: ART-V supplementary Table 2.

Table 2 measures, per "batch" (a video of 16 frames) at 320 / 448 / 768 px, the FLOPs, the throughput and the
peak memory of ART-V and of ModelScope text-to-video. Its ratios ART-V / ModelScope are 12.16/7.87 = 1.55x,
5.55/3.43 = 1.62x, 1.35/0.78 = 1.73x (throughput) and 10.52/10.91 = 0.96x, 11.08/16.67 = 0.66x,
13.44/75.08 = 0.18x (memory). This benchmark measures the same three models side by side, in one run:

- `artv`: one Φdynamic + Φmask forward on the 16 frames as a batch of 16 single-frame inputs (x_t [16, 4, h, w],
  text [16, 77, 1024], reference [16, 12, h, w], anchor [16, 4, h, w]), adapters and anchor blocks included;
- `artv_eq1`: one guided step of ART-V supplementary eq. (1) (`MultiConditionGuidance`, conf/guidance/artv_eq1.yaml):
  full, reference dropped, anchor dropped and text dropped as ONE batch of 4 x 16 frames;
- `modelscope`: diffusers' `UNet3DConditionModel` with ModelScope's configuration on a [1, 4, 16, h, w] sample;

each case (model, resolution) in its own Python process, so its peak memory is its own. FLOPs come from
bench/flops.py's counters (multiply-accumulates, on the meta device); the throughput is denoiser steps per second
(one step = one forward of the case's batch); the achieved FLOP/s (2 x MACs / time) is set against a measured peak
matmul rate of the same device and dtype.

- GPU (when available): the full-size models at 320 / 448 / 768 px in bf16 weights, PyTorch SDPA attention
  (diffusers' default processor uses it too), eager and `torch.compile`d; memory = `torch.cuda.max_memory_allocated`
  (weights + activations).
- CPU: the same architectures at 1/8 width for BOTH models (every channel count and attention width divided by 8,
  GroupNorm groups 32 -> 4, so each group keeps SD's channels per group) at 128 / 192 / 320 px (latents 16 / 24 / 40
  standing for Table 2's 40 / 56 / 96: the UNets need multiples of 8, and shrinking the token count about as much as
  the width keeps the balance of attention and convolution cost); float32; memory = peak RSS of the case's process
  minus its RSS before the model was built (weights + activations).

    python -m bench.inference_table2                 # writes its section of docs/BENCHMARKS.md
    python -m bench.inference_table2 --quick         # a smoke run on the tiniest sizes, into a temporary document
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from bench import flops
from bench.report import (
    add_case_runner_arguments,
    default_doc_path,
    machine_description,
    markdown_table,
    peak_rss_bytes,
    reset_peak_rss,
    run_case_in_subprocess,
    utc_now,
    write_section,
)
from modules.blocks import normalization
from modules.blocks.attention import attention_backend

LOGGER = logging.getLogger("bench.inference_table2")
SECTION = "bench_inference_table2"
MODULE = "bench.inference_table2"
MODELS = ("modelscope", "artv", "artv_eq1")
MODEL_NAMES = {
    "modelscope": "ModelScope 3D UNet",
    "artv": "ART-V (Φdynamic + Φmask)",
    "artv_eq1": "ART-V eq. (1) step (4x batch)",
}
TABLE2_RESOLUTIONS = (320, 448, 768)
# ART-V supplementary Table 2, Inference: throughput and memory (GB) per 16-frame batch.
TABLE2_THROUGHPUT = {
    "artv": {320: 12.16, 448: 5.55, 768: 1.35},
    "modelscope": {320: 7.87, 448: 3.43, 768: 0.78},
}
TABLE2_MEMORY_GB = {
    "artv": {320: 10.52, 448: 11.08, 768: 13.44},
    "modelscope": {320: 10.91, 448: 16.67, 768: 75.08},
}
# CPU stand-ins for Table 2's columns: latents 16 / 24 / 40 for 40 / 56 / 96 (see the module docstring).
CPU_RESOLUTIONS = {320: 128, 448: 192, 768: 320}
CPU_WIDTH_DIVISOR = 8
QUICK_RESOLUTIONS = {320: 64}
QUICK_FRAMES = 4
GUIDANCE_CONFIG = flops.CONF_DIR / "guidance" / "artv_eq1.yaml"
PEAK_MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LATENT_CHANNELS = 4  # SD's AutoencoderKL latents (ART-V supplementary Table 1 input_shape [4, 80, 80])


@dataclasses.dataclass(frozen=True)
class InferenceCase:
    """One measured configuration; JSON-serialisable so that it can run in a child process.

    model: one of `MODELS`; table2_resolution: the Table 2 column it stands for; resolution: the pixels actually
    measured (latent side = resolution / 8); width_divisor: every channel count divided by this (1 = paper size);
    dtype: "fp32" | "bf16" weights and inputs; compile: wrap the network in `torch.compile`.
    """

    model: str
    table2_resolution: int
    resolution: int
    width_divisor: int
    num_frames: int
    device: str
    dtype: str
    compile: bool
    warmup: int
    runs: int
    threads: int


# ---- models at a given width ----------------------------------------------------------------------------
@contextmanager
def group_norm_groups(num_groups: int) -> Iterator[None]:
    """Build the UNet's GroupNorms (`modules.blocks.normalization.group_norm`) with `num_groups` groups."""
    previous = normalization.NUM_GROUPS
    normalization.NUM_GROUPS = num_groups
    try:
        yield
    finally:
        normalization.NUM_GROUPS = previous


def _divided(value: int, divisor: int, what: str) -> int:
    if value % divisor:
        raise ValueError(f"width divisor {divisor} does not divide {what} = {value}; use 1, 2, 4 or 8")
    return value // divisor


def artv_width_overrides(width_divisor: int) -> list[str]:
    """Hydra overrides dividing Φdynamic's and Φmask's widths and head widths (ART-V supplementary Table 1:
    320 / 64 channels, head channels 64 / 32) by `width_divisor`; the head counts stay those of the paper."""
    dynamic = OmegaConf.load(flops.CONF_DIR / "backbone" / "sd21.yaml").unet
    mask = OmegaConf.load(flops.CONF_DIR / "model" / "artv.yaml").net.mask_unet
    return [
        f"backbone.unet.model_channels={_divided(dynamic.model_channels, width_divisor, 'Φdynamic channels')}",
        f"backbone.unet.num_head_channels={_divided(dynamic.num_head_channels, width_divisor, 'Φdynamic head')}",
        f"model.net.mask_unet.model_channels={_divided(mask.model_channels, width_divisor, 'Φmask channels')}",
        f"model.net.mask_unet.num_head_channels={_divided(mask.num_head_channels, width_divisor, 'Φmask head')}",
    ]


def modelscope_config(width_divisor: int) -> dict[str, Any]:
    """ModelScope's UNet3DConditionModel configuration with every width divided by `width_divisor`.

    diffusers' `attention_head_dim` is the number of spatial heads (64 at paper size, head width 5 at 320
    channels) and the head width of the temporal attentions; dividing it keeps the spatial head width and the
    temporal head count, so every attention's inner width is divided like the channels.
    """
    config = dict(flops.MODELSCOPE_UNET)
    config["block_out_channels"] = tuple(
        _divided(width, width_divisor, "ModelScope channels") for width in config["block_out_channels"]
    )
    config["attention_head_dim"] = _divided(config["attention_head_dim"], width_divisor, "ModelScope heads")
    config["norm_num_groups"] = _divided(config["norm_num_groups"], width_divisor, "GroupNorm groups")
    return config


def build_network(model: str, width_divisor: int, device: str | torch.device) -> nn.Module:
    """The case's network (random weights) on `device` ("meta" for counting): ART-V's denoiser for `artv` and
    `artv_eq1`, the ModelScope UNet for `modelscope`."""
    groups = _divided(normalization.NUM_GROUPS, width_divisor, "GroupNorm groups")
    if model == "modelscope":
        return flops.build_modelscope_unet(modelscope_config(width_divisor), device=device)
    with group_norm_groups(groups):
        return flops.build_artv_net(overrides=artv_width_overrides(width_divisor), device=device)


def eq1_guidance() -> Any:
    """ART-V supplementary eq. (1) with the paper's weights (conf/guidance/artv_eq1.yaml)."""
    return instantiate(OmegaConf.load(GUIDANCE_CONFIG))


def count_macs(cases: list[InferenceCase]) -> list[flops.MacCount]:
    """Multiply-accumulates of one step of each case (bench/flops.py's counters on the meta device; one meta
    network per model and width, one count per network and input size)."""
    # an eq. (1) step evaluates e_full and one e_drop_k per weighted condition in one batch
    eq1_variants = 1 + len(eq1_guidance().active_weights)
    networks: dict[tuple[str, int], nn.Module] = {}
    single_forward: dict[tuple[str, int, int, int], flops.MacCount] = {}
    counts = []
    for case in cases:
        kind = "modelscope" if case.model == "modelscope" else "artv"
        key = (kind, case.width_divisor, case.resolution, case.num_frames)
        if key not in single_forward:
            if (kind, case.width_divisor) not in networks:
                networks[kind, case.width_divisor] = build_network(kind, case.width_divisor, "meta")
            counter = flops.modelscope_macs if kind == "modelscope" else flops.artv_macs
            single_forward[key] = counter(
                networks[kind, case.width_divisor], case.resolution, case.num_frames
            )
        count = single_forward[key]
        if case.model == "artv_eq1":
            count = flops.MacCount(count.conv_linear * eq1_variants, count.attention * eq1_variants)
        counts.append(count)
    return counts


def step_function(case: InferenceCase, net: nn.Module) -> Callable[[], Tensor]:
    """A closure running one denoiser step of the case on random inputs (text tokens 77 x 1024; the eq. (1) null
    conditions are zeros)."""
    device, dtype = torch.device(case.device), DTYPES[case.dtype]
    size = case.resolution // flops.LATENT_FACTOR
    frames = case.num_frames

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    channels = LATENT_CHANNELS
    if case.model == "modelscope":
        sample, text = randn(1, channels, frames, size, size), randn(1, flops.TEXT_TOKENS, flops.TEXT_DIM)
        t = torch.full((1,), 500, device=device)
        return lambda: net(sample, t, encoder_hidden_states=text, return_dict=False)[0]
    x_t = randn(frames, channels, size, size)
    t = torch.full((frames,), 500, device=device)
    cond = {
        "text": randn(frames, flops.TEXT_TOKENS, flops.TEXT_DIM),
        "reference": randn(frames, 3 * channels, size, size),
        "anchor": randn(frames, channels, size, size),
    }
    if case.model == "artv":
        return lambda: net(x_t, t, cond)
    guidance = eq1_guidance()
    null_cond = {key: torch.zeros_like(value[:1]) for key, value in cond.items()}
    return lambda: guidance(net, x_t, t, cond, null_cond)


# ---- measuring ------------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_matmul(device: str, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square matmuls (8192 on GPU, 1024 on CPU) in `dtype` on `device`."""
    torch_device = torch.device(device)
    size = PEAK_MATMUL_SIZE["cuda" if torch_device.type == "cuda" else "cpu"]
    a = torch.randn(size, size, device=torch_device, dtype=DTYPES[dtype])
    b = torch.randn(size, size, device=torch_device, dtype=DTYPES[dtype])
    torch.matmul(a, b)
    _synchronize(torch_device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(torch_device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def run_case(case: InferenceCase) -> dict[str, Any]:
    """Build the case's network, time `case.runs` steps after `case.warmup` ones, and return the measurements
    (memory: CUDA max allocated, or the growth of peak RSS from just before building the network)."""
    if case.model not in MODELS or case.runs < 1:
        raise ValueError(f"a case needs a model of {MODELS} and at least one timed step, got {case}")
    torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    device = torch.device(case.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = reset_peak_rss()
    net = build_network(case.model, case.width_divisor, device).eval()
    if DTYPES[case.dtype] != torch.float32:
        net = net.to(dtype=DTYPES[case.dtype])
    parameters = sum(parameter.numel() for parameter in net.parameters())
    if case.compile:
        net = torch.compile(net)
    step = step_function(case, net)
    times = []
    with torch.no_grad(), attention_backend("sdpa"):
        for _ in range(case.warmup):
            step()
        _synchronize(device)
        for _ in range(case.runs):
            start = time.perf_counter()
            step()
            _synchronize(device)
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        memory, memory_kind = torch.cuda.max_memory_allocated(device), "max_memory_allocated"
    else:
        memory, memory_kind = peak_rss_bytes() - rss_before, "peak RSS growth"
    median = statistics.median(times)
    return {
        **dataclasses.asdict(case),
        "parameters": parameters,
        "times_s": times,
        "median_s": median,
        "steps_per_s": 1.0 / median,
        "memory_bytes": memory,
        "memory_kind": memory_kind,
    }


def measure(cases: list[InferenceCase], in_process: bool = False) -> list[dict[str, Any]]:
    """Run every case, each in a fresh process unless `in_process` (tests: faster, memory not independent),
    and add its MACs and achieved FLOP/s (2 x MACs per step / seconds per step)."""
    results = []
    for case, macs in zip(cases, count_macs(cases), strict=True):
        result = run_case(case) if in_process else run_case_in_subprocess(MODULE, dataclasses.asdict(case))
        result["conv_linear_macs"] = macs.conv_linear
        result["total_macs"] = macs.total
        result["achieved_flops_per_s"] = 2 * macs.total / result["median_s"]
        LOGGER.info(case_line(result))
        results.append(result)
    return results


def _ratio(result: dict[str, Any] | None, baseline: dict[str, Any], key: str) -> float | None:
    """result[key] / baseline[key], or None without a result or with a zero baseline."""
    if result is None or not baseline[key]:
        return None
    return result[key] / baseline[key]


def ratio_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ART-V / ModelScope throughput and memory per Table 2 column (and compile setting), with the paper's."""
    rows = []
    keyed = {(r["model"], r["table2_resolution"], r["compile"]): r for r in results}
    for (model, column, compiled), modelscope in keyed.items():
        artv, eq1 = keyed.get(("artv", column, compiled)), keyed.get(("artv_eq1", column, compiled))
        if model != "modelscope" or artv is None:
            continue
        rows.append(
            {
                "table2_resolution": column,
                "resolution": modelscope["resolution"],
                "compile": compiled,
                "throughput_ratio": _ratio(artv, modelscope, "steps_per_s"),
                "paper_throughput_ratio": TABLE2_THROUGHPUT["artv"][column]
                / TABLE2_THROUGHPUT["modelscope"][column],
                "memory_ratio": _ratio(artv, modelscope, "memory_bytes"),
                "paper_memory_ratio": TABLE2_MEMORY_GB["artv"][column]
                / TABLE2_MEMORY_GB["modelscope"][column],
                "eq1_throughput_ratio": _ratio(eq1, modelscope, "steps_per_s"),
                "eq1_memory_ratio": _ratio(eq1, modelscope, "memory_bytes"),
            }
        )
    return rows


# ---- reporting ------------------------------------------------------------------------------------------
def case_line(result: dict[str, Any]) -> str:
    return (
        f"{result['model']:>10} @ {result['resolution']} px (Table 2 {result['table2_resolution']}), "
        f"{result['dtype']}{', compiled' if result['compile'] else ''}: {result['steps_per_s']:.3f} steps/s "
        f"({result['median_s']:.3f} s), memory {result['memory_bytes'] / 2**30:.2f} GiB, "
        f"{result['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s"
    )


def summary_line(rows: list[dict[str, Any]]) -> str:
    cases = [
        f"{row['table2_resolution']}{' compiled' if row['compile'] else ''}: throughput "
        f"{_optional_ratio(row['throughput_ratio'])} (paper {row['paper_throughput_ratio']:.2f}x), memory "
        f"{_optional_ratio(row['memory_ratio'])} (paper {row['paper_memory_ratio']:.2f}x)"
        for row in rows
    ]
    return "inference_table2 ART-V / ModelScope: " + "; ".join(cases)


def _optional_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_section(
    results: list[dict[str, Any]], peak_flops: float, command: str, machine: str, gpu: bool
) -> str:
    first = results[0]
    unit, scale = ("T", 1e12) if gpu else ("G", 1e9)
    measurements = markdown_table(
        [
            "Table 2 column",
            "measured at",
            "model",
            "compiled",
            "parameters (M)",
            "MACs conv+linear / +attention (G)",
            "Table 2 FLOPs (G, full size)",
            "steps/s",
            "s/step",
            "peak memory (GiB)",
            f"achieved {unit}FLOP/s (% of peak)",
        ],
        [
            [
                f"{r['table2_resolution']} px",
                f"{r['resolution']} px",
                MODEL_NAMES[r["model"]],
                "yes" if r["compile"] else "no",
                f"{r['parameters'] / 1e6:.1f}",
                f"{r['conv_linear_macs'] / 1e9:.1f} / {r['total_macs'] / 1e9:.1f}",
                _table2_flops(r),
                f"{r['steps_per_s']:.3f}",
                f"{r['median_s']:.3f}",
                f"{r['memory_bytes'] / 2**30:.3f}",
                f"{r['achieved_flops_per_s'] / scale:.1f} ({100 * r['achieved_flops_per_s'] / peak_flops:.0f} %)",
            ]
            for r in results
        ],
    )
    ratios = markdown_table(
        [
            "Table 2 column",
            "measured at",
            "compiled",
            "throughput ART-V / ModelScope",
            "Table 2 throughput ratio",
            "memory ART-V / ModelScope",
            "Table 2 memory ratio",
            "eq. (1) step: throughput / memory vs ModelScope",
        ],
        [
            [
                f"{row['table2_resolution']} px",
                f"{row['resolution']} px",
                "yes" if row["compile"] else "no",
                _optional_ratio(row["throughput_ratio"]),
                f"{row['paper_throughput_ratio']:.2f}x",
                _optional_ratio(row["memory_ratio"]),
                f"{row['paper_memory_ratio']:.2f}x",
                f"{_optional_ratio(row['eq1_throughput_ratio'])} / {_optional_ratio(row['eq1_memory_ratio'])}",
            ]
            for row in ratio_rows(results)
        ],
    )
    setting = _setting_line(results, gpu)
    return "\n".join(
        [
            "## Inference vs ModelScope, ART-V Table 2 protocol (bench/inference_table2.py)",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            setting,
            "- One step = one denoiser forward of a 16-frame batch: ART-V runs Φdynamic + Φmask on the 16 frames "
            "as a batch of 16 (adapters and anchor blocks included); the eq. (1) step evaluates the four "
            "condition variants of ART-V supplementary eq. (1) as one batch of 64; ModelScope runs "
            "diffusers' UNet3DConditionModel (ModelScope's configuration) on a [1, 4, 16, h, w] sample. "
            "A guided ModelScope (CFG) step would be a batch of 2 videos.",
            f"- {first['warmup']} warm-up + {first['runs']} timed steps per case (median), each case in its own "
            "process, random weights. MACs from bench/flops.py's counters for the measured sizes. Peak matmul "
            f"rate of this device in {first['dtype']}: {peak_flops / scale:.1f} {unit}FLOP/s (best square matmul).",
            "- Table 2 (A100): throughput ART-V 12.16 / 5.55 / 1.35 vs ModelScope 7.87 / 3.43 / 0.78, memory "
            "10.52 / 11.08 / 13.44 GB vs 10.91 / 16.67 / 75.08 GB at 320 / 448 / 768 px.",
            "",
            *measurements,
            "",
            *ratios,
        ]
    )


def _setting_line(results: list[dict[str, Any]], gpu: bool) -> str:
    """What was measured how: device, size, dtype, compile settings and the memory measure."""
    first = results[0]
    divisor = first["width_divisor"]
    compiled = sorted({result["compile"] for result in results})
    compile_text = {
        (False,): "eager",
        (True,): "`torch.compile`d",
        (False, True): "eager and `torch.compile`d",
    }
    size = (
        "paper-size models"
        if divisor == 1
        else f"BOTH models at 1/{divisor} width (every channel count and attention width divided, GroupNorm "
        f"groups 32 -> {32 // divisor}, so each group keeps SD's channels per group)"
    )
    memory = (
        "`torch.cuda.max_memory_allocated`"
        if first["memory_kind"] == "max_memory_allocated"
        else "peak RSS of the case's process minus its RSS before building the model"
    )
    line = (
        f"- Setting: {'GPU' if gpu else 'CPU'}, {size}, {first['num_frames']} frames at the pixel sizes of the "
        f"second column, {first['dtype']} weights and inputs, SDPA attention, {compile_text[tuple(compiled)]}; "
        f"memory = {memory} (weights + activations)."
    )
    stand_ins = {result["table2_resolution"]: result["resolution"] for result in results}
    if any(column != measured for column, measured in stand_ins.items()):
        mapping = ", ".join(f"{measured} px for {column} px" for column, measured in stand_ins.items())
        line += (
            f" Reduced sizes stand in for Table 2's columns ({mapping}): latent sides must be multiples of 8 for "
            "the UNets, and shrinking the token count about as much as the width keeps the attention / "
            "convolution balance. Absolute numbers are not comparable with Table 2's A100 figures; the ratios are "
            "the point."
        )
    if not gpu:
        line += (
            " No GPU ran: the GPU path (paper size, bf16, `torch.compile`, `max_memory_allocated`, TFLOP/s against "
            "the GPU's matmul peak) was only checked on the CPU for syntax and logic."
        )
    return line


def _table2_flops(result: dict[str, Any]) -> str:
    method = "ModelScope" if result["model"] == "modelscope" else "ART-V"
    flops_g = flops.TABLE2_GFLOPS[method][result["table2_resolution"]]
    return f"{4 * flops_g:.0f} (4 x {flops_g:.0f})" if result["model"] == "artv_eq1" else f"{flops_g:.0f}"


# ---- command line ---------------------------------------------------------------------------------------
def plan_cases(args: argparse.Namespace) -> list[InferenceCase]:
    """The cases of a run: per Table 2 column, ModelScope, ART-V and the eq. (1) step (x compile settings).
    Paper resolutions at full width (`--width-divisor 1`), the CPU stand-ins otherwise."""
    if args.quick:
        resolutions, frames = QUICK_RESOLUTIONS, QUICK_FRAMES
    elif args.width_divisor == 1:
        resolutions, frames = {column: column for column in TABLE2_RESOLUTIONS}, flops.NUM_FRAMES
    else:
        resolutions, frames = CPU_RESOLUTIONS, flops.NUM_FRAMES
    compile_settings = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    warmup = args.warmup if args.warmup is not None else (2 if any(compile_settings) else 1)
    return [
        InferenceCase(
            model=model,
            table2_resolution=column,
            resolution=resolution,
            width_divisor=args.width_divisor,
            num_frames=frames,
            device=args.device,
            dtype=args.dtype,
            compile=compiled,
            warmup=0 if args.quick else warmup,
            runs=1 if args.quick else args.runs,
            threads=args.threads,
        )
        for column, resolution in resolutions.items()
        for compiled in compile_settings
        for model in MODELS
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if gpu else "cpu", help="cuda or cpu (default: cuda if any)"
    )
    parser.add_argument(
        "--width-divisor",
        type=int,
        default=1 if gpu else CPU_WIDTH_DIVISOR,
        choices=(1, 2, 4, 8),
        help="divide every channel count of both models (default: 1 on GPU, 8 on CPU)",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16" if gpu else "fp32")
    parser.add_argument(
        "--compile", choices=("off", "on", "both"), default="both" if gpu else "off", help="torch.compile"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 1; 2 when compiling)"
    )
    parser.add_argument("--runs", type=int, default=10 if gpu else 2, help="timed steps per case")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, 4 frames, 1 step per case")
    add_case_runner_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.case_json:
        result = run_case(InferenceCase(**json.loads(args.case_json)))
        sys.stdout.write(json.dumps(result) + "\n")
        return [result]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    machine = machine_description(args.threads)
    cases = plan_cases(args)
    peak_flops = measure_peak_matmul(args.device, args.dtype)
    results = measure(cases, in_process=args.in_process)
    rows = ratio_rows(results)
    LOGGER.info(summary_line(rows))
    if not args.no_write:
        doc = args.doc or default_doc_path(args.quick)
        command = " ".join(["python -m bench.inference_table2", *argv])
        gpu = torch.device(args.device).type == "cuda"
        write_section(doc, SECTION, markdown_section(results, peak_flops, command, machine, gpu))
        LOGGER.info("wrote the %s section of %s", SECTION, doc)
    return results


if __name__ == "__main__":
    main()
