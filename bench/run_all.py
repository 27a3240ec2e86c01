"""Run every benchmark in sequence and refresh docs/BENCHMARKS.md (`make bench`).

    python -m bench.run_all            # the full set: ~10 minutes on a quiet 2-core CPU (~13 when shared)
    python -m bench.run_all --quick    # a smoke run of each on the tiniest sizes (~1 minute); nothing is
                                       # written to docs/BENCHMARKS.md (new sections go to a temporary document)

Order and CPU budget: FLOPs (bench/flops.py, < 1 min), the SD 2.1 UNet forward at 768 px (bench/bench_unet.py, one
timed forward per case and no warm-up: the four cases take ~4 min), the 256-px video loader (bench/bench_loader.py,
~1 min), the paper runs' checkpoint sizes (bench/checkpoint_sizes.py, shapes only, < 1 min), the Table 2 inference
comparison (bench/inference_table2.py, ~3-4 min), training steps (bench/training_step.py, ~1 min) and the loader
against the toy training step (bench/data_vs_step.py, < 1 min, reusing the training step times). The first four run
as their own commands; a benchmark that fails is logged and the others still run; the exit status is 1 when any
failed.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import data_vs_step, inference_table2, training_step
from bench.report import REPO_ROOT, default_doc_path

LOGGER = logging.getLogger("bench.run_all")


@dataclass
class Outcome:
    """What one benchmark did: its name, seconds, and the error when it failed."""

    name: str
    seconds: float
    error: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


def run_command(module: str, arguments: list[str]) -> None:
    """`python -m module arguments` from the repository root; its log goes to this process's stderr."""
    completed = subprocess.run([sys.executable, "-m", module, *arguments], cwd=REPO_ROOT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(arguments)} exited with {completed.returncode}")


def timed(name: str, function: Callable[[], list[dict[str, Any]] | None]) -> Outcome:
    """Run one benchmark, catching its failure so that the others still run."""
    LOGGER.info("==== %s", name)
    start = time.perf_counter()
    try:
        results = function()
    except Exception as error:  # one failing benchmark must not stop the others; main() reports it
        LOGGER.exception("%s failed", name)
        return Outcome(name, time.perf_counter() - start, error=f"{type(error).__name__}: {error}")
    return Outcome(name, time.perf_counter() - start, results=results or [])


def old_benchmark_arguments(quick: bool) -> dict[str, tuple[str, list[str]]]:
    """The benchmarks that write their own section of docs/BENCHMARKS.md, with the arguments of this run.

    Quick: tiny sizes and `--no-write` (their numbers must not replace measured ones); bench_unet runs its one
    in-process case (full SD 2.1 UNet, 64-px latent 8) instead of four processes.
    """
    if quick:
        return {
            "flops": ("bench.flops", ["--resolutions", "320", "--no-write"]),
            "unet": (
                "bench.bench_unet",
                ["--case", "cpu:sdpa:fp32", "--latent-size", "8", "--warmup", "0", "--runs", "1"],
            ),
            "loader": (
                "bench.bench_loader",
                ["--videos", "4", "--clips", "4", "--batch-size", "2", "--workers", "0", "--no-write"],
            ),
            "checkpoint_sizes": ("bench.checkpoint_sizes", ["--no-write"]),
        }
    return {
        "flops": ("bench.flops", []),
        "unet": ("bench.bench_unet", ["--warmup", "0", "--runs", "1"]),
        "loader": ("bench.bench_loader", []),
        "checkpoint_sizes": ("bench.checkpoint_sizes", []),
    }


def run_all(quick: bool) -> list[Outcome]:
    """Every benchmark in order; the new sections go to `default_doc_path(quick)`, their default."""
    common = ["--quick"] if quick else []
    outcomes = [
        timed(name, lambda module=module, arguments=arguments: run_command(module, arguments))
        for name, (module, arguments) in old_benchmark_arguments(quick).items()
    ]
    outcomes.append(timed("inference_table2", lambda: inference_table2.main(common)))
    training = timed("training_step", lambda: training_step.main(common))
    outcomes.append(training)
    # the toy step times just measured (none on a GPU run, where the paper experiments ran instead)
    toy_steps = [r for r in training.results if r["experiment"] in data_vs_step.EXPERIMENTS] or None
    outcomes.append(timed("data_vs_step", lambda: data_vs_step.main(common, step_results=toy_steps)))
    return outcomes


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run on the tiniest sizes; docs untouched")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    outcomes = run_all(args.quick)
    for outcome in outcomes:
        status = "ok" if outcome.error is None else f"FAILED ({outcome.error})"
        LOGGER.info("%-17s %6.1f s  %s", outcome.name, outcome.seconds, status)
    failed = [outcome.name for outcome in outcomes if outcome.error is not None]
    LOGGER.info(
        "run_all%s: %d benchmarks in %.1f min, %s; new sections in %s",
        " --quick" if args.quick else "",
        len(outcomes),
        (time.perf_counter() - start) / 60,
        f"failed: {', '.join(failed)}" if failed else "all ran",
        default_doc_path(args.quick),
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
