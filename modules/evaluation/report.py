"""Evaluation results as `eval_results.json`, an `eval_results.md` table, and TensorBoard scalars.

Every number is written with the protocol settings it depends on (clip counts, resize, feature network,
weights file), so a table cell can always be traced back to how it was measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

JSON_NAME = "eval_results.json"
MARKDOWN_NAME = "eval_results.md"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class EvaluationReport:
    """What one evaluation run measured.

    Attributes:
        protocol: `eval_protocol.name` (toy, msrvtt, ucf101).
        results: `{metric name: {result key: value}}`, e.g. `{"fvd": {"fvd": 312.5}}`.
        settings: `{metric name: {setting: value}}` from each metric's `settings()`.
        skipped: `{metric name: reason}` for metrics that could not run.
        sources: where the videos came from (generated folder, checkpoint, real data).
    """

    protocol: str
    results: dict[str, dict[str, float]]
    settings: dict[str, dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def flat_results(self) -> dict[str, float]:
        """`{result key: value}` over all metrics (`fvd`, `clipsim`, `toy/color_accuracy`, ...)."""
        return {key: value for values in self.results.values() for key, value in values.items()}


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _format_settings(settings: dict[str, Any]) -> str:
    return "; ".join(f"{key}={value}" for key, value in settings.items()).replace("|", "/")


def markdown_table(report: EvaluationReport) -> str:
    """A Markdown document: one table row per result, then the skipped metrics and the sources."""
    lines = [
        f"# Evaluation: {report.protocol}",
        "",
        "| metric | value | protocol |",
        "|---|---:|---|",
    ]
    for name, values in report.results.items():
        for key, value in values.items():
            lines.append(
                f"| {key} | {_format_value(value)} | {_format_settings(report.settings.get(name, {}))} |"
            )
    if report.skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {name}: {reason}" for name, reason in report.skipped.items()]
    if report.sources:
        lines += ["", "Sources:", ""]
        lines += [f"- {key}: {value}" for key, value in report.sources.items()]
    return "\n".join(lines) + "\n"


def write_report(
    report: EvaluationReport, output_dir: str | Path, *, global_step: int = 0
) -> dict[str, Path]:
    """Write the JSON, the Markdown table and TensorBoard scalars (`eval/<key>`) under `output_dir`.

    Returns:
        `{"json": path, "markdown": path, "tensorboard": directory}`.
    """
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / JSON_NAME
    json_path.write_text(json.dumps(asdict(report), indent=2, sort_keys=False, default=str) + "\n")
    markdown_path = directory / MARKDOWN_NAME
    markdown = markdown_table(report)
    markdown_path.write_text(markdown)
    tensorboard_dir = directory / TENSORBOARD_DIR
    with SummaryWriter(log_dir=str(tensorboard_dir)) as writer:
        for key, value in report.flat_results().items():
            writer.add_scalar(f"eval/{key}", value, global_step=global_step)
        writer.add_text("eval/table", markdown, global_step=global_step)
    return {"json": json_path, "markdown": markdown_path, "tensorboard": tensorboard_dir}
