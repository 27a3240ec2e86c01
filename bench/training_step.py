"""Training step time and peak memory per GPU (or CPU process), with and without gradient checkpointing.

One step = `VideoDiffusionModule.diffusion_loss` on a synthetic batch (random clips in [-1, 1] through the frozen
first stage and text encoder, the model's own training example, condition dropout, eps-MSE) + backward + the
optimizer step + the EMA update, as `training_step` / `optimizer_step` do in a run (the LR scheduler step and
Lightning's bookkeeping excluded). The module is built from the composed Hydra config (conf/train.yaml with
`experiment=...`), gradient checkpointing switched by `backbone.unet.use_checkpoint` (Φmask follows it). Each case
runs in its own process, so its peak memory is its own; one process = one GPU (DDP's gradient all-reduce excluded).

- GPU (when available): the paper runs, `experiment=scvideo_webvid256` (16 x 256 x 256 clips, batch 5 per GPU,
  SCVideo appendix section 1) and `experiment=artv_webvid` (16 frames at 320 px, batch 24 per GPU, ART-V
  supplementary Table 4), random weights, bf16 autocast as `trainer.precision=bf16-mixed`; memory =
  `torch.cuda.max_memory_allocated`.
- CPU: the toy runs, `experiment=toy_scvideo` and `experiment=toy_artv` (8 x 32 x 32 clips, batch 8 / 16), float32;
  memory = peak RSS growth of the case's process from just before building the module (weights, gradients,
  optimizer state and activations).

    python -m bench.training_step                 # writes its section of docs/BENCHMARKS.md
    python -m bench.training_step --quick         # one step per case, into a temporary document
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from bench.report import (
    REPO_ROOT,
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
from modules.training.video_diffusion_module import VideoDiffusionModule

LOGGER = logging.getLogger("bench.training_step")
SECTION = "bench_training_step"
MODULE = "bench.training_step"
CONF_DIR = REPO_ROOT / "conf"
GPU_EXPERIMENTS = ("scvideo_webvid256", "artv_webvid")
CPU_EXPERIMENTS = ("toy_scvideo", "toy_artv")
PRECISIONS = ("fp32", "bf16-mixed")
CAPTION = "a red circle moving left"


@dataclasses.dataclass(frozen=True)
class TrainingCase:
    """One measured configuration; JSON-serialisable so that it can run in a child process.

    experiment: a conf/experiment/ name; gradient_checkpointing: `backbone.unet.use_checkpoint`; precision:
    "fp32" or "bf16-mixed" (autocast); warmup / steps: untimed and timed optimizer steps.
    """

    experiment: str
    gradient_checkpointing: bool
    device: str
    precision: str
    warmup: int
    steps: int
    threads: int


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """conf/train.yaml composed with `overrides` (no Hydra run: `paths.*` that need one must be overridden)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="train", overrides=list(overrides))


def case_config(case: TrainingCase) -> DictConfig:
    """The composed config of `case`: its experiment, checkpointing switched, no pretrained weights."""
    return compose_train_config(
        [
            f"experiment={case.experiment}",
            f"backbone.unet.use_checkpoint={str(case.gradient_checkpointing).lower()}",
            "backbone.pretrained=null",
        ]
    )


def synthetic_batch(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """A batch as the datamodule yields it: video `[B, T, 3, H, W]` in [-1, 1] and B captions (data.batch_size,
    data.num_frames, resolution.height / width of `cfg`)."""
    batch_size, frames = cfg.data.batch_size, cfg.data.num_frames
    video = torch.rand(batch_size, frames, 3, cfg.resolution.height, cfg.resolution.width, device=device)
    return {"video": video * 2 - 1, "caption": [CAPTION] * batch_size}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _optimizer(module: VideoDiffusionModule) -> torch.optim.Optimizer:
    configured = module.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def training_step(
    module: VideoDiffusionModule, optimizer: torch.optim.Optimizer, batch: dict[str, Any], precision: str
) -> Tensor:
    """Loss, backward, optimizer step and EMA update of one batch; returns the (detached) loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        loss = module.diffusion_loss(batch)
    loss.backward()
    optimizer.step()
    module.update_ema(None)
    return loss.detach()


def _build_and_time(case: TrainingCase, cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    module: VideoDiffusionModule = instantiate(cfg.model).to(device)
    module.train()
    optimizer = _optimizer(module)
    batch = synthetic_batch(cfg, device)
    for _ in range(case.warmup):
        training_step(module, optimizer, batch, case.precision)
    _synchronize(device)
    times = []
    for _ in range(case.steps):
        start = time.perf_counter()
        loss = training_step(module, optimizer, batch, case.precision)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "trainable_parameters": sum(p.numel() for _, p in module.net.trainable_named_parameters()),
        "loss": float(loss),
        "times_s": times,
        "median_s": median,
        "clips_per_s": cfg.data.batch_size / median,
    }


def run_case(case: TrainingCase) -> dict[str, Any]:
    """Build the case's module, time `case.steps` steps after `case.warmup` ones, return the measurements
    (`error: out of memory` instead when the GPU runs out of memory)."""
    if case.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {case.precision!r}")
    if case.steps < 1:
        raise ValueError(f"a case needs at least one timed step, got steps={case.steps}")
    torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    device = torch.device(case.device)
    cfg = case_config(case)
    result: dict[str, Any] = {
        **dataclasses.asdict(case),
        "batch_size": cfg.data.batch_size,
        "clip": f"{cfg.data.num_frames}x{cfg.resolution.height}x{cfg.resolution.width}",
        "denoiser": cfg.model.net._target_.rsplit(".", 1)[-1],
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = reset_peak_rss()
    try:
        result.update(_build_and_time(case, cfg, device))
    except torch.cuda.OutOfMemoryError:
        return {**result, "error": "out of memory"}
    if device.type == "cuda":
        memory, memory_kind = torch.cuda.max_memory_allocated(device), "max_memory_allocated"
    else:
        memory, memory_kind = peak_rss_bytes() - rss_before, "peak RSS growth"
    return {**result, "memory_bytes": memory, "memory_kind": memory_kind}


def measure(cases: list[TrainingCase], in_process: bool = False) -> list[dict[str, Any]]:
    """Run every case, each in a fresh process unless `in_process` (tests: faster, memory not independent)."""
    results = []
    for case in cases:
        result = run_case(case) if in_process else run_case_in_subprocess(MODULE, dataclasses.asdict(case))
        LOGGER.info(case_line(result))
        results.append(result)
    return results


def case_line(result: dict[str, Any]) -> str:
    name = (
        f"{result['experiment']} ({result['clip']}, batch {result['batch_size']}), checkpointing "
        f"{'on' if result['gradient_checkpointing'] else 'off'}"
    )
    if "error" in result:
        return f"{name}: {result['error']}"
    return (
        f"{name}: {result['median_s']:.3f} s/step, {result['clips_per_s']:.2f} clips/s, "
        f"memory {result['memory_bytes'] / 2**30:.3f} GiB"
    )


def summary_line(results: list[dict[str, Any]]) -> str:
    cases = [
        f"{r['experiment']}{' +ckpt' if r['gradient_checkpointing'] else ''} "
        + (r["error"] if "error" in r else f"{r['median_s']:.3f} s/step {r['memory_bytes'] / 2**30:.2f} GiB")
        for r in results
    ]
    return "training_step: " + "; ".join(cases)


def markdown_section(results: list[dict[str, Any]], command: str, machine: str, gpu: bool) -> str:
    rows = [
        [
            r["experiment"],
            r["denoiser"],
            r["clip"],
            str(r["batch_size"]),
            "on" if r["gradient_checkpointing"] else "off",
            r["precision"],
            *(
                ["-", r["error"], "-", "-", "-"]
                if "error" in r
                else [
                    f"{r['trainable_parameters'] / 1e6:.2f}",
                    f"{r['median_s']:.3f}",
                    ", ".join(f"{t:.3f}" for t in r["times_s"]),
                    f"{r['clips_per_s']:.2f}",
                    f"{r['memory_bytes'] / 2**30:.3f}",
                ]
            ),
        ]
        for r in results
    ]
    table = markdown_table(
        [
            "experiment",
            "denoiser",
            "clip (T x H x W)",
            "batch",
            "gradient checkpointing",
            "precision",
            "trainable parameters (M)",
            "median s / step",
            "timed steps (s)",
            "clips/s",
            "peak memory (GiB)",
        ],
        rows,
    )
    first = results[0]
    memory = (
        "`torch.cuda.max_memory_allocated` (weights, gradients, optimizer state, activations)"
        if gpu
        else "peak RSS growth of the case's process from just before building the module (weights, gradients, "
        "optimizer state, activations)"
    )
    notes = [
        f"- Setting: {'GPU, the paper runs' if gpu else 'CPU, the toy runs'}, random weights, {first['warmup']} "
        f"warm-up + {first['steps']} timed steps per case (median), each case in its own process; memory = {memory}.",
        "- One step = `VideoDiffusionModule.diffusion_loss` on a synthetic batch (frozen first stage and text "
        "encoder included) + backward + optimizer step + EMA update; per GPU/process, DDP's all-reduce excluded.",
    ]
    if not gpu:
        notes.append(
            "- No GPU ran: the paper-size cases (SCVideo 16x256x256 batch 5, ART-V 16 frames at 320 px batch 24, "
            "bf16 autocast, `max_memory_allocated`) were only checked on the CPU for syntax and logic."
        )
    return "\n".join(
        [
            "## Training step time and memory (bench/training_step.py)",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            *notes,
            "",
            *table,
        ]
    )


def plan_cases(args: argparse.Namespace) -> list[TrainingCase]:
    """Every experiment with gradient checkpointing off and on."""
    experiments = args.experiments or (GPU_EXPERIMENTS if args.device.startswith("cuda") else CPU_EXPERIMENTS)
    return [
        TrainingCase(
            experiment=experiment,
            gradient_checkpointing=checkpointing,
            device=args.device,
            precision=args.precision,
            warmup=0 if args.quick else args.warmup,
            steps=1 if args.quick else args.steps,
            threads=args.threads,
        )
        for experiment in experiments
        for checkpointing in (False, True)
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
        "--experiments",
        nargs="+",
        default=None,
        help=f"conf/experiment names (default: {' '.join(GPU_EXPERIMENTS)} on GPU, {' '.join(CPU_EXPERIMENTS)} on CPU)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed" if gpu else "fp32")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 step per case")
    add_case_runner_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.case_json:
        result = run_case(TrainingCase(**json.loads(args.case_json)))
        sys.stdout.write(json.dumps(result) + "\n")
        return [result]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    machine = machine_description(args.threads)
    results = measure(plan_cases(args), in_process=args.in_process)
    LOGGER.info(summary_line(results))
    if not args.no_write:
        doc = args.doc or default_doc_path(args.quick)
        command = " ".join(["python -m bench.training_step", *argv])
        gpu = torch.device(args.device).type == "cuda"
        write_section(doc, SECTION, markdown_section(results, command, machine, gpu))
        LOGGER.info("wrote the %s section of %s", SECTION, doc)
    return results


if __name__ == "__main__":
    main()
