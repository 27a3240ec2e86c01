"""Benchmark the 768-px SD 2.1 UNet forward (latent 4x96x96, context 1x77x1024, batch 1, random weights).

Cases: attention backend (PyTorch SDPA vs the naive float32-softmax reference) x precision (float32 vs bf16
autocast), on the CPU and, when available, on CUDA. Each case runs in its own subprocess so that its peak RSS
is its own; a case does one warm-up forward and reports the median of the timed ones. The results replace the
`bench_unet` section of docs/BENCHMARKS.md (other sections are kept).

    python -m bench.bench_unet                  # all cases, writes docs/BENCHMARKS.md
    python -m bench.bench_unet --runs 3 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.report import end_load_line, machine_description, write_section
from modules.blocks.attention import attention_backend

LOGGER = logging.getLogger("bench.bench_unet")
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO_ROOT / "conf" / "backbone" / "sd21.yaml"
BENCHMARKS_MD = REPO_ROOT / "docs" / "BENCHMARKS.md"
SECTION = "bench_unet"
BACKENDS = ("sdpa", "naive")
PRECISIONS = ("fp32", "bf16")
CONTEXT_TOKENS = 77


def rss_gib() -> float:
    """Peak resident set size of this process so far, GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(device: str, backend: str, precision: str, latent_size: int, warmup: int, runs: int) -> dict:
    """Time `runs` forwards of the SD 2.1 UNet after `warmup` ones; returns the case's measurements."""
    torch.manual_seed(0)
    config = OmegaConf.load(CONFIG_PATH)
    unet = instantiate(config.unet, _partial_=False).to(device).eval()
    context_dim = config.unet.context_dim
    x = torch.randn(1, config.unet.in_channels, latent_size, latent_size, device=device)
    timesteps = torch.tensor([500], device=device)
    context = torch.randn(1, CONTEXT_TOKENS, context_dim, device=device)
    weights_rss = rss_gib()
    is_cuda = device.startswith("cuda")

    def forward() -> None:
        with torch.autocast(
            device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"
        ):
            unet(x, timesteps, context)
        if is_cuda:
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode(), attention_backend(backend):
        for _ in range(warmup):
            forward()
        if is_cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(runs):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    result = {
        "device": device,
        "backend": backend,
        "precision": precision,
        "median_s": statistics.median(times),
        "times_s": times,
        "weights_rss_gib": weights_rss,
        "peak_rss_gib": rss_gib(),
    }
    if is_cuda:
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_case_in_subprocess(case: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.bench_unet",
        "--case",
        case,
        "--latent-size",
        str(args.latent_size),
        "--warmup",
        str(args.warmup),
        "--runs",
        str(args.runs),
        "--threads",
        str(args.threads),
    ]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"bench case {case} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def summary_line(result: dict) -> str:
    times = ", ".join(f"{t:.2f}" for t in result["times_s"])
    line = (
        f"{result['device']:>5} {result['backend']:>5} {result['precision']}: median {result['median_s']:.2f} s "
        f"per forward (runs {times}); peak RSS {result['peak_rss_gib']:.2f} GiB "
        f"(after building the model {result['weights_rss_gib']:.2f} GiB)"
    )
    if "peak_gpu_gib" in result:
        line += f"; peak GPU memory {result['peak_gpu_gib']:.2f} GiB"
    return line


def markdown_section(results: list[dict], args: argparse.Namespace, command: str, machine: str) -> str:
    size = args.latent_size
    rows = [
        "| device | attention | precision | median s / forward | timed runs (s) | peak RSS GiB | peak GPU GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        peak_gpu = f"{result['peak_gpu_gib']:.2f}" if "peak_gpu_gib" in result else "-"
        rows.append(
            f"| {result['device']} | {result['backend']} | {result['precision']} | {result['median_s']:.2f} | "
            f"{', '.join(f'{t:.2f}' for t in result['times_s'])} | {result['peak_rss_gib']:.2f} | {peak_gpu} |"
        )
    weights = results[0]["weights_rss_gib"] if results else float("nan")
    return "\n".join(
        [
            "## SD 2.1 UNet forward at 768 px (bench/bench_unet.py)",
            "",
            f"- Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            f"- Workload: UNet of conf/backbone/sd21.yaml (865.9 M parameters, random weights), batch 1, latent "
            f"4x{size}x{size}, context 1x{CONTEXT_TOKENS}x1024, `torch.inference_mode()`; {args.warmup} warm-up "
            f"+ {args.runs} timed forwards per case, each case in its own process.",
            "- `sdpa` = `torch.nn.functional.scaled_dot_product_attention`; `naive` = explicit float32 scores and "
            "softmax, one (batch, head) slice at a time at the 96x96 level (9216 x 9216 scores per head).",
            "- `bf16` = `torch.autocast(dtype=torch.bfloat16)` around float32 weights (norms and the naive softmax "
            "stay in float32).",
            f"- Peak RSS includes the float32 weights (about {weights:.1f} GiB right after building the model).",
            end_load_line(),
            "",
            *rows,
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latent-size", type=int, default=96, help="latent side (96 = 768 px)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per case")
    parser.add_argument("--runs", type=int, default=2, help="timed forwards per case")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/BENCHMARKS.md")
    parser.add_argument("--case", help="internal: run one case 'device:backend:precision' and print JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        device, backend, precision = args.case.split(":")
        result = run_case(device, backend, precision, args.latent_size, args.warmup, args.runs)
        sys.stdout.write(json.dumps(result) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    machine = machine_description(args.threads)  # its load average is the one at the start
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for backend in BACKENDS:
            for precision in PRECISIONS:
                result = run_case_in_subprocess(f"{device}:{backend}:{precision}", args)
                LOGGER.info(summary_line(result))
                results.append(result)
    if not args.no_write:
        command = "python -m bench.bench_unet " + " ".join(sys.argv[1:])
        write_section(BENCHMARKS_MD, SECTION, markdown_section(results, args, command.strip(), machine))
        LOGGER.info("wrote the %s section of %s", SECTION, BENCHMARKS_MD)


if __name__ == "__main__":
    main()
