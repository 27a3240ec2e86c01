"""Tabulate the final metrics of the runs of a Hydra multirun as a Markdown table.

    python train.py -m experiment=toy_scvideo,toy_artv logger=[tensorboard,csv]
    python scripts/tabulate_runs.py logs/train/multiruns/2026-11-21_10-00-00
    python scripts/tabulate_runs.py SWEEP_DIR --metrics val/loss train/loss --out ablation.md

A run is a sub-directory holding `.hydra/overrides.yaml` (Hydra writes one per job). Its metrics come from the
CSV logger (`**/metrics.csv`: the last logged value of every column) or, without one, from the TensorBoard event
files (`**/events.out.tfevents.*`: the last value of every scalar tag). The table has one row per run: the job
number, the command-line overrides that differ between the runs, the last step, and the metrics (all of them
unless `--metrics` names some; `-` where a run lacks one).
"""

import argparse
import csv
import logging
import sys
from pathlib import Path

import yaml

log = logging.getLogger("tabulate_runs")

NON_METRIC_COLUMNS = {"step", "epoch"}


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run directories under `sweep_dir` (those with `.hydra/overrides.yaml`), by job number then name."""
    runs = [path.parent.parent for path in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(runs, key=lambda run: (0, int(run.name)) if run.name.isdigit() else (1, run.name))


def read_overrides(run: Path) -> dict[str, str]:
    """`{"experiment": "toy_artv", ...}` from the run's `.hydra/overrides.yaml` (a list of `key=value`)."""
    entries = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def metrics_from_csv(path: Path) -> dict[str, float]:
    """Last non-empty value of every column of a Lightning CSVLogger `metrics.csv` (`step` included)."""
    last: dict[str, float] = {}
    with path.open(newline="") as stream:
        for row in csv.DictReader(stream):
            for column, text in row.items():
                value = _number(text) if text not in (None, "") else None
                if value is not None:
                    last[column] = value
    return last


def metrics_from_tensorboard(directory: Path) -> dict[str, float]:
    """Last value of every scalar tag in the TensorBoard event files under `directory` (`step`: the largest)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last: dict[str, tuple[int, float]] = {}
    for events in sorted(directory.glob("**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            final = accumulator.Scalars(tag)[-1]
            if tag not in last or final.step >= last[tag][0]:
                last[tag] = (final.step, final.value)
    metrics = {tag: value for tag, (_, value) in last.items()}
    if last:
        metrics["step"] = float(max(step for step, _ in last.values()))
    return metrics


def run_metrics(run: Path) -> dict[str, float]:
    """The run's final metrics: from its newest `metrics.csv`, else from its TensorBoard events, else none."""
    csv_files = sorted(run.glob("**/metrics.csv"), key=lambda path: path.stat().st_mtime)
    if csv_files:
        return metrics_from_csv(csv_files[-1])
    metrics = metrics_from_tensorboard(run)
    if not metrics:
        log.warning("no metrics.csv and no TensorBoard scalars in %s", run)
    return metrics


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def markdown_table(sweep_dir: Path, metrics: list[str] | None = None) -> str:
    """The Markdown table of the runs under `sweep_dir` (see the module docstring)."""
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no run directories (with .hydra/overrides.yaml) under {sweep_dir}")
    overrides = {run: read_overrides(run) for run in runs}
    values = {run: run_metrics(run) for run in runs}
    keys = sorted({key for entries in overrides.values() for key in entries})
    swept = [key for key in keys if len({entries.get(key) for entries in overrides.values()}) > 1] or keys
    if metrics is None:
        found = {name for run_values in values.values() for name in run_values} - NON_METRIC_COLUMNS
        metrics = sorted(found, key=lambda name: (not name.startswith("val/"), name))
    header = ["run", *swept, "step", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run.name, *(overrides[run].get(key, "-") for key in swept), _format(values[run].get("step"))]
        cells += [_format(values[run].get(name)) for name in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (logs/train/multiruns/DATE_TIME)")
    parser.add_argument("--metrics", nargs="+", help="metric names to show (default: every metric found)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    table = markdown_table(args.sweep_dir, args.metrics)
    if args.out is not None:
        args.out.write_text(table)
        log.info("wrote %s", args.out)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
