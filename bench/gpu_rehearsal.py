"""GPU rehearsal: on one GPU, the paper runs' training steps and the Table 2 inference protocol at paper size, in
one command, before a cluster run is booked.

    python -m bench.gpu_rehearsal                      # one GPU: writes the gpu_rehearsal section of BENCHMARKS.md
    python -m bench.gpu_rehearsal --reduced            # CPU: the same code at 1/8 width (~1 min on 2 cores)
    python -m bench.gpu_rehearsal --scvideo-pretrained /path/sd-v1-4.ckpt --artv-pretrained /path/v2-1_512.ckpt

(a) Training: `experiment=scvideo_webvid256` (SD 1.4-size SCVideo, `trainable: paper`, 16 x 256 x 256 clips, batch 5
    per GPU) and `experiment=artv_webvid` (ART-V: Φdynamic SD 2.1-size + Φmask + adapters + anchor attention, 16
    frames at 320 px, batch 24 per GPU; when 24 does not fit, the largest micro-batch that does, reported), composed
    with `trainer=a100x4` and built with `hydra.utils.instantiate` into the real `VideoDiffusionModule`: random
    weights unless given, synthetic clips of the real shapes through the frozen VAE and text encoder, loss + backward
    + AdamW + EMA per step in the config's precision (bf16-mixed: bf16 autocast) with the config's gradient
    checkpointing; 2 warm-up + 3 timed steps. Reported: step time, peak memory (`torch.cuda.max_memory_allocated`),
    model FLOPs of a step (`torch.utils.flop_counter`, bench/rehearsal_training.py) and MFU against the GPU's
    datasheet dense bf16 peak (A100 312, H100 SXM / H200 989 TFLOP/s; `--peak-tflops` for others).
(b) Inference: bench/inference_table2.py's protocol (ART-V, its eq. (1) step and the ModelScope 3D UNet, 16 frames at
    320 / 448 / 768 px) in bf16, eager unless `--compile on|both`.
(c) Writes its own section of docs/BENCHMARKS.md (`--doc` elsewhere, `--no-write` for none).

`--reduced` runs the same code on the paper architectures at 1/8 width (4 frames, 64 px, batch 2 for training;
bench/inference_table2.py's quick sizes for inference), one warm-up + one timed step, on the CPU unless
`--device cuda`; its section says that its numbers are not GPU numbers. Not part of `make bench` (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from typing import Any

import torch

from bench import flops, inference_table2
from bench.inference_table2 import InferenceCase
from bench.rehearsal_training import (
    PAPER_EXPERIMENTS,
    REDUCED_BATCH,
    REDUCED_FRAMES,
    REDUCED_RESOLUTION,
    REDUCED_WIDTH_DIVISOR,
    RehearsalCase,
    run_rehearsal_case,
    stated_peak_flops,
)
from bench.report import (
    BENCHMARKS_MD,
    add_case_runner_arguments,
    machine_description,
    markdown_table,
    run_case_in_subprocess,
    utc_now,
    write_section,
)

LOGGER = logging.getLogger("bench.gpu_rehearsal")
SECTION = "gpu_rehearsal"
MODULE = "bench.gpu_rehearsal"
PRECISION_DTYPES = {"bf16-mixed": "bf16", "fp32": "fp32"}


def training_cases(args: argparse.Namespace) -> list[RehearsalCase]:
    """Both paper experiments with this run's device, steps and weights."""
    pretrained = {"scvideo_webvid256": args.scvideo_pretrained, "artv_webvid": args.artv_pretrained}
    return [
        RehearsalCase(
            experiment=experiment,
            device=args.device,
            precision=args.precision,
            warmup=args.warmup,
            steps=args.steps,
            reduced=args.reduced,
            threads=args.threads,
            pretrained=pretrained[experiment],
        )
        for experiment in PAPER_EXPERIMENTS
    ]


def inference_cases(args: argparse.Namespace, dtype: str) -> list[InferenceCase]:
    """Table 2's cases (bench/inference_table2.py) at paper size, or at its quick sizes when reduced; weights and
    inputs in `dtype`."""
    if args.reduced:
        resolutions = inference_table2.QUICK_RESOLUTIONS
        frames, divisor = inference_table2.QUICK_FRAMES, inference_table2.CPU_WIDTH_DIVISOR
    else:
        resolutions = {column: column for column in inference_table2.TABLE2_RESOLUTIONS}
        frames, divisor = flops.NUM_FRAMES, 1
    compile_settings = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    return [
        InferenceCase(
            model=model,
            table2_resolution=column,
            resolution=resolution,
            width_divisor=divisor,
            num_frames=frames,
            device=args.device,
            dtype=dtype,
            compile=compiled,
            warmup=args.warmup + (1 if compiled else 0),
            runs=args.steps,
            threads=args.threads,
        )
        for column, resolution in resolutions.items()
        for compiled in compile_settings
        for model in inference_table2.MODELS
    ]


def peak_flops(args: argparse.Namespace, dtype: str, measured: float) -> tuple[float, str]:
    """The peak FLOP/s that MFU is measured against, and where it comes from: `--peak-tflops`, the GPU's datasheet,
    else `measured`, this device's best square matmul in `dtype` (bench/inference_table2.py)."""
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12, "given by --peak-tflops"
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        stated = stated_peak_flops(name)
        if stated is not None and dtype == "bf16":
            return stated, f"{name} datasheet, dense bf16"
    return measured, f"measured: best {inference_table2.PEAK_MATMUL_SIZE[device.type]}^2 {dtype} matmul here"


def add_utilisation(results: list[dict[str, Any]], peak: float) -> None:
    """MFU (model FLOPs per second / peak) and the executed-FLOP utilisation (recomputation included) per result."""
    for result in results:
        result["mfu"] = result["achieved_flops_per_s"] / peak
        result["executed_utilisation"] = result["executed_flops"] / result["median_s"] / peak


def run_training(cases: list[RehearsalCase], in_process: bool) -> list[dict[str, Any]]:
    """Every case, each in a fresh process (its own peak memory) unless `in_process`."""
    results = []
    for case in cases:
        result = (
            run_rehearsal_case(case)
            if in_process
            else run_case_in_subprocess(MODULE, dataclasses.asdict(case))
        )
        results.append(result)
    return results


def training_line(result: dict[str, Any]) -> str:
    """One log line per experiment."""
    return (
        f"{result['experiment']} ({result['clip']}, micro-batch {result['batch_size']} of "
        f"{result['requested_batch_size']}, {result['precision']}): {result['median_s']:.3f} s/step, "
        f"peak memory {result['memory_bytes'] / 2**30:.2f} GiB, {result['model_flops'] / 1e9:.1f} GFLOP/step, "
        f"MFU {100 * result['mfu']:.1f} %, loss {result['loss']:.4f}, {result['changed_parameter_tensors']}/"
        f"{result['trainable_parameter_tensors']} trainable tensors changed"
    )


def training_table(results: list[dict[str, Any]]) -> list[str]:
    """The training measurements as a markdown table; FLOPs in T (paper size) or G (reduced)."""
    unit, scale = ("G", 1e9) if results[0]["reduced"] else ("T", 1e12)
    return markdown_table(
        [
            "experiment",
            "denoiser",
            "clip (T x H x W)",
            "micro-batch (config)",
            "precision",
            "gradient checkpointing",
            "parameters / trainable (M)",
            "median s / step (timed steps)",
            "clips/s",
            "peak memory (GiB)",
            f"model {unit}FLOP / step (denoiser share)",
            f"executed {unit}FLOP / step",
            f"achieved {unit}FLOP/s",
            "MFU",
            "loss",
            "trainable tensors changed",
        ],
        [
            [
                r["experiment"],
                r["denoiser"],
                r["clip"],
                f"{r['batch_size']} ({r['requested_batch_size']})",
                r["precision"],
                "on" if r["gradient_checkpointing"] else "off",
                f"{r['parameters'] / 1e6:.1f} / {r['trainable_parameters'] / 1e6:.1f}",
                f"{r['median_s']:.3f} ({', '.join(f'{t:.3f}' for t in r['times_s'])})",
                f"{r['clips_per_s']:.2f}",
                f"{r['memory_bytes'] / 2**30:.3f}",
                f"{r['model_flops'] / scale:.1f} ({100 * r['net_flops'] / r['model_flops']:.0f} %)",
                f"{r['executed_flops'] / scale:.1f}",
                f"{r['achieved_flops_per_s'] / scale:.1f}",
                f"{100 * r['mfu']:.1f} % (executed {100 * r['executed_utilisation']:.1f} %)",
                f"{r['loss']:.4f}",
                f"{r['changed_parameter_tensors']} / {r['trainable_parameter_tensors']}",
            ]
            for r in results
        ],
    )


def markdown_section(
    training: list[dict[str, Any]],
    inference: list[dict[str, Any]],
    peak: tuple[float, str],
    matmul_peak: float,
    command: str,
    machine: str,
    in_process: bool,
) -> str:
    """The gpu_rehearsal section: what ran how, the training table, and bench/inference_table2.py's tables."""
    first = training[0]
    gpu = first["device"].startswith("cuda")
    reduced = first["reduced"]
    label = (
        f"**{'GPU' if gpu else 'CPU'} reduced run ({REDUCED_WIDTH_DIVISOR}x narrower models, small clips): a check "
        "that the rehearsal code runs end to end, not paper-size GPU numbers.**"
        if reduced
        else "**GPU run at paper size.**"
    )
    if reduced:
        sizes = (
            f"the paper architectures at 1/{REDUCED_WIDTH_DIVISOR} width (UNets, VAE, text towers; GroupNorm groups "
            f"32 -> {32 // REDUCED_WIDTH_DIVISOR}; head counts and depths kept), {REDUCED_FRAMES} frames at "
            f"{REDUCED_RESOLUTION} px, batch {REDUCED_BATCH}"
        )
    else:
        sizes = "paper size (clips and batches in the table)"
    given = [f"{r['experiment']} from `{r['pretrained']}`" for r in training if r["pretrained"]]
    weights = "; ".join(given) + " (others random)" if given else "random weights"
    unit, scale = ("G", 1e9) if reduced else ("T", 1e12)
    memory = (
        "`torch.cuda.max_memory_allocated` after the batch-size probes (weights, gradients, AdamW and EMA state, "
        "activations)"
        if first["memory_kind"] == "max_memory_allocated"
        else "peak RSS growth of the case's process from just before building the module"
    )
    inference_section = inference_table2.markdown_section(inference, matmul_peak, command, machine, gpu)
    # a subsection: its heading one level down, without the date / machine / command lines said above
    inference_lines = [
        line
        for line in inference_section.replace("## ", "### ", 1).splitlines()
        if not line.startswith(("- Date:", "- Machine:", "- Command:"))
    ]
    return "\n".join(
        [
            "## GPU rehearsal: paper training steps and the Table 2 protocol (bench/gpu_rehearsal.py)",
            "",
            label,
            "",
            "On one GPU, `python -m bench.gpu_rehearsal` runs the paper experiments' training steps and the Table 2 "
            "inference protocol at paper size and rewrites this section; `python -m bench.gpu_rehearsal --reduced` "
            "is the same code on the CPU at reduced size (what the test suite runs). Weights: `--scvideo-pretrained` "
            "/ `--artv-pretrained` (default: random). Not part of `make bench`.",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            f"- Training: `experiment=scvideo_webvid256` and `experiment=artv_webvid` with `trainer=a100x4`, "
            f"{sizes}; the real `VideoDiffusionModule` (hydra.utils.instantiate), "
            f"{weights} (all-zero layers of random ones filled in, bench/rehearsal_training.py), synthetic clips through the frozen VAE and text encoder; one step = loss + "
            f"backward + AdamW at the configured LR + EMA update; {first['warmup']} warm-up + {first['steps']} timed "
            "steps after a micro-batch probe (the config's batch, else the largest that fits); one optimizer step per "
            "micro-batch (ART-V's 5-batch accumulation and DDP's all-reduce not rehearsed); "
            f"{'all cases in one process' if in_process else 'each case in its own process'}; memory = {memory}.",
            "- Model FLOPs: one step's matmuls, convolutions and attention counted by `torch.utils.flop_counter` on a "
            "meta-device copy of the module without gradient checkpointing (VAE and text encoder forwards included; "
            "the share of the denoiser in brackets; one seeded draw: ART-V encodes only the distinct frames of its "
            "<= 4 picks a clip, so its count varies a little with the draw); executed = with the config's gradient "
            "checkpointing recomputation. MFU = model FLOPs / "
            f"median step time / peak; peak = {peak[0] / scale:.1f} {unit}FLOP/s ({peak[1]}).",
            "",
            *training_table(training),
            "",
            *inference_lines,
        ]
    )


def check_results(training: list[dict[str, Any]]) -> list[str]:
    """What looks wrong in the training results: non-finite loss or time, weights that did not change."""
    problems = []
    for result in training:
        name = result["experiment"]
        if not (
            math.isfinite(result["loss"]) and math.isfinite(result["median_s"]) and result["median_s"] > 0
        ):
            problems.append(f"{name}: loss {result['loss']}, step time {result['median_s']}")
        if result["changed_parameter_tensors"] == 0:
            problems.append(f"{name}: no trainable tensor changed after the steps")
    return problems


def parse_args(argv: list[str]) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if gpu else "cpu", help="cuda or cpu (default: cuda if any)"
    )
    parser.add_argument(
        "--reduced", action="store_true", help="1/8-width models on small clips (the CPU check)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; 1 when reduced)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3; 1 when reduced)")
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISION_DTYPES),
        default=None,
        help="default: the config's trainer.precision",
    )
    parser.add_argument(
        "--compile", choices=("off", "on", "both"), default="off", help="inference torch.compile"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU, TFLOP/s")
    parser.add_argument(
        "--scvideo-pretrained", default=None, help="SD 1.4 file for experiment=scvideo_webvid256"
    )
    parser.add_argument("--artv-pretrained", default=None, help="SD 2.1 file for experiment=artv_webvid")
    add_case_runner_arguments(parser)
    args = parser.parse_args(argv)
    args.warmup = (1 if args.reduced else 2) if args.warmup is None else args.warmup
    args.steps = (1 if args.reduced else 3) if args.steps is None else args.steps
    if torch.device(args.device).type != "cuda" and not args.reduced and not args.case_json:
        parser.error("the paper-size rehearsal needs a GPU (--device cuda); on a CPU run --reduced")
    return args


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.case_json:
        result = run_rehearsal_case(RehearsalCase(**json.loads(args.case_json)))
        sys.stdout.write(json.dumps(result) + "\n")
        return {"training": [result]}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    machine = machine_description(args.threads)
    training = run_training(training_cases(args), args.in_process)
    dtype = PRECISION_DTYPES[training[0]["precision"]]  # inference in the training precision's dtype
    matmul_peak = inference_table2.measure_peak_matmul(args.device, dtype)
    peak = peak_flops(args, dtype, matmul_peak)
    add_utilisation(training, peak[0])
    for result in training:
        LOGGER.info(training_line(result))
    inference = inference_table2.measure(inference_cases(args, dtype), in_process=args.in_process)
    LOGGER.info(inference_table2.summary_line(inference_table2.ratio_rows(inference)))
    problems = check_results(training)
    if problems:
        raise RuntimeError("the rehearsal ran but looks wrong (nothing written): " + "; ".join(problems))
    if not args.no_write:
        doc = args.doc or BENCHMARKS_MD
        command = " ".join(["python -m bench.gpu_rehearsal", *argv])
        write_section(
            doc,
            SECTION,
            markdown_section(training, inference, peak, matmul_peak, command, machine, args.in_process),
        )
        LOGGER.info("wrote the %s section of %s", SECTION, doc)
    return {"training": training, "inference": inference}


if __name__ == "__main__":
    main()
