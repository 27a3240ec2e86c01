"""Is the data loader the bottleneck? Loader clips/s against the clips/s a training step consumes, same machine.

For each toy experiment (`experiment=toy_scvideo`, `experiment=toy_artv`) the loader is the training run's own:
the experiment's `VideoDataModule` (WebDataset shards of the toy "shapes" videos, generated into a temporary
directory, fewer of them than a run's 1024) with its clip shape and batch size, timed as bench/bench_loader.py
times it: one epoch of `--clips` clips from creating the DataLoader iterator (worker start-up included) to the last
batch, for 0, 1 and 2 workers. The consumption is batch size / step time of the same experiment, from
bench/training_step.py (given by bench/run_all.py, else measured here, in this process). The report names the
fewest workers whose loader keeps up, and how much of a step the loading takes with no workers (where the main
process loads and trains in turn).

    python -m bench.data_vs_step                 # writes its section of docs/BENCHMARKS.md
    python -m bench.data_vs_step --quick         # 0 workers, few clips, one training step, temporary document
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from bench import training_step
from bench.report import default_doc_path, machine_description, markdown_table, utc_now, write_section

LOGGER = logging.getLogger("bench.data_vs_step")
SECTION = "bench_data_vs_step"
EXPERIMENTS = training_step.CPU_EXPERIMENTS
TOY_TRAIN_SAMPLES = 256  # two shards of 128 toy videos: enough for two workers, ~5 s to generate
QUICK_TOY_TRAIN_SAMPLES = 32  # one shard, for the 0-worker smoke run
TOY_VAL_SAMPLES = 16


def measure_loader(
    experiment: str, data_dir: Path, num_workers: int, clips: int, toy_videos: int = TOY_TRAIN_SAMPLES
) -> dict[str, Any]:
    """One epoch of `clips` clips through the experiment's training DataLoader with `num_workers` workers, over
    `toy_videos` toy training videos generated into `data_dir` on first use."""
    cfg = training_step.compose_train_config(
        [
            f"experiment={experiment}",
            f"paths.data_dir={data_dir}",
            f"data.num_workers={num_workers}",
            f"data.samples_per_epoch={clips}",
            f"data.toy_shards.train_samples={toy_videos}",
            f"data.toy_shards.val_samples={TOY_VAL_SAMPLES}",
            f"data.val_samples={TOY_VAL_SAMPLES}",
        ]
    )
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    start = time.perf_counter()
    loaded = sum(len(batch["caption"]) for batch in datamodule.train_dataloader())
    seconds = time.perf_counter() - start
    return {
        "experiment": experiment,
        "workers": num_workers,
        "clips": loaded,
        "seconds": seconds,
        "clips_per_s": loaded / seconds,
        "batch_size": cfg.data.batch_size,
        "clip": f"{cfg.data.num_frames}x{cfg.resolution.height}x{cfg.resolution.width}",
    }


def measure_steps(experiments: tuple[str, ...], quick: bool, threads: int) -> list[dict[str, Any]]:
    """Training step times of the experiments as configured (no gradient checkpointing), in this process."""
    cases = [
        training_step.TrainingCase(
            experiment=experiment,
            gradient_checkpointing=False,
            device="cpu",
            precision="fp32",
            warmup=0 if quick else 2,
            steps=1 if quick else 5,
            threads=threads,
        )
        for experiment in experiments
    ]
    return training_step.measure(cases, in_process=True)


def compare(loader_results: list[dict[str, Any]], step_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per experiment: consumption (clips/s), loader clips/s per worker count, the fewest workers that keep up
    (None if none does) and the loading share of a step with no workers."""
    steps = {r["experiment"]: r for r in step_results if not r["gradient_checkpointing"] and "median_s" in r}
    rows = []
    for experiment in dict.fromkeys(r["experiment"] for r in loader_results):
        if experiment not in steps:
            raise ValueError(f"no training step time for {experiment}: run bench.training_step on it first")
        step = steps[experiment]
        loaders = [r for r in loader_results if r["experiment"] == experiment]
        consumed = step["clips_per_s"]
        keeping_up = [r["workers"] for r in loaders if r["clips_per_s"] >= consumed]
        in_process = next((r for r in loaders if r["workers"] == 0), None)
        rows.append(
            {
                "experiment": experiment,
                "clip": loaders[0]["clip"],
                "batch_size": step["batch_size"],
                "step_s": step["median_s"],
                "consumed_clips_per_s": consumed,
                "loader_clips_per_s": {r["workers"]: r["clips_per_s"] for r in loaders},
                "workers_needed": min(keeping_up) if keeping_up else None,
                # with 0 workers the main process loads a batch, then trains on it
                "load_share_without_workers": (
                    (step["batch_size"] / in_process["clips_per_s"]) / step["median_s"]
                    if in_process
                    else None
                ),
            }
        )
    return rows


def _workers_text(row: dict[str, Any]) -> str:
    if row["workers_needed"] is None:
        return f"none of {sorted(row['loader_clips_per_s'])} keeps up"
    return str(row["workers_needed"])


def summary_line(rows: list[dict[str, Any]]) -> str:
    cases = [
        f"{row['experiment']} consumes {row['consumed_clips_per_s']:.1f} clips/s, loader "
        + ", ".join(f"{rate:.0f} ({workers}w)" for workers, rate in row["loader_clips_per_s"].items())
        + f" clips/s, workers needed: {_workers_text(row)}"
        for row in rows
    ]
    return "data_vs_step: " + "; ".join(cases)


def markdown_section(
    rows: list[dict[str, Any]], clips: int, toy_videos: int, command: str, machine: str
) -> str:
    table = markdown_table(
        [
            "experiment",
            "clip (T x H x W)",
            "batch",
            "training step (s)",
            "clips/s consumed",
            "loader clips/s (workers)",
            "fewest workers keeping up",
            "loading share of a step with 0 workers",
        ],
        [
            [
                row["experiment"],
                row["clip"],
                str(row["batch_size"]),
                f"{row['step_s']:.3f}",
                f"{row['consumed_clips_per_s']:.2f}",
                ", ".join(f"{rate:.1f} ({workers})" for workers, rate in row["loader_clips_per_s"].items()),
                _workers_text(row),
                "-"
                if row["load_share_without_workers"] is None
                else f"{100 * row['load_share_without_workers']:.1f} %",
            ]
            for row in rows
        ],
    )
    return "\n".join(
        [
            "## Data loader vs training step (bench/data_vs_step.py)",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            f"- Loader: the toy experiment's own `VideoDataModule` (toy shapes shards, {toy_videos} videos "
            f"of 24 frames at 64 px, 8 fps), {clips} clips per case, timed from creating the iterator (worker "
            "start-up included) to the last batch, as bench/bench_loader.py times it.",
            "- Consumption: batch size / median training step time of the same experiment on the CPU "
            "(bench/training_step.py, no gradient checkpointing, float32).",
            "- The loader was measured alone: during training its workers share the same cores with the step, so "
            "a loader only a little faster than the consumption can still slow a run; with 0 workers the main "
            "process loads and trains in turn and the loading share adds to every step.",
            "",
            *table,
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--clips", type=int, default=128, help="clips read per loader case")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 0 workers, 32 clips, 1 training step"
    )
    parser.add_argument(
        "--doc", type=Path, default=None, help="document to update (default: docs/BENCHMARKS.md)"
    )
    parser.add_argument("--no-write", action="store_true", help="only log the results")
    return parser.parse_args(argv)


def main(
    argv: list[str] | None = None, step_results: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Measure the loader for every experiment and worker count and compare with the training step rate
    (`step_results` from bench.training_step, else measured here); returns the comparison rows."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    machine = machine_description(args.threads)
    experiments = tuple(args.experiments)
    workers, clips, toy_videos = (
        ([0], 32, QUICK_TOY_TRAIN_SAMPLES) if args.quick else (args.workers, args.clips, TOY_TRAIN_SAMPLES)
    )
    if step_results is None:
        step_results = measure_steps(experiments, args.quick, args.threads)
    loader_results = []
    with tempfile.TemporaryDirectory(prefix="bench_data_vs_step_") as data_dir:
        for experiment in experiments:
            for num_workers in workers:
                result = measure_loader(experiment, Path(data_dir), num_workers, clips, toy_videos)
                LOGGER.info(
                    "%s loader, %d workers: %.1f clips/s", experiment, num_workers, result["clips_per_s"]
                )
                loader_results.append(result)
    rows = compare(loader_results, step_results)
    LOGGER.info(summary_line(rows))
    if not args.no_write:
        doc = args.doc or default_doc_path(args.quick)
        command = " ".join(["python -m bench.data_vs_step", *argv])
        write_section(doc, SECTION, markdown_section(rows, clips, toy_videos, command, machine))
        LOGGER.info("wrote the %s section of %s", SECTION, doc)
    return rows


if __name__ == "__main__":
    main()
