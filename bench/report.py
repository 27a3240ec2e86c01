"""What every benchmark shares: the machine description, the sections of docs/BENCHMARKS.md, and running one
measured case in a fresh Python process so that its peak memory is its own.

Each benchmark owns one section of the document, delimited by `<!-- name:start -->` / `<!-- name:end -->`;
`write_section` replaces that section and keeps everything else.

A case that runs in its own process (`run_case_in_subprocess`) is the module's `--case-json JSON` entry point,
which prints the case's result as one JSON line; `peak_rss_bytes()` after the timed runs minus `reset_peak_rss()`
called just before building the model gives the memory the case itself needed (the interpreter and the imports
excluded).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "docs" / "BENCHMARKS.md"
CASE_FLAG = "--case-json"


def utc_now() -> str:
    """The date line of a section: `2026-11-21 05:19 UTC`."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine_description(threads: int | None = None) -> str:
    """CPU model, logical cores, RAM, torch threads, load average, Python and torch versions, and the GPU."""
    cpu_model = platform.processor() or platform.machine() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu_model = names[0] if names else cpu_model
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory = f", {total_kib / 2**20:.0f} GiB RAM"
    threads = torch.get_num_threads() if threads is None else threads
    description = (
        f"{cpu_model}, {os.cpu_count()} logical cores{memory}, {threads} torch threads, load average {load_average()} "
        f"when the bench started; Python {platform.python_version()}, torch {torch.__version__}"
    )
    if torch.cuda.is_available():
        description += f"; GPU {torch.cuda.get_device_name(0)}"
    return description


def load_average() -> str:
    """The 1, 5 and 15 minute load averages of the machine now: `1.9, 1.7, 1.6`."""
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def end_load_line() -> str:
    """A section's line with the load average when the bench ended (machine_description has it at the start)."""
    return (
        f"- Load average (1, 5, 15 min) when the bench ended: {load_average()}, on {os.cpu_count()} logical cores; "
        "a load above the core count means other processes competed for the CPUs."
    )


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in `path`, appending the section
    when absent and creating the file when missing; the rest of the file is kept."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _status_bytes(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes, or None where there is no such file."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> int:
    """Restart this process's peak-RSS record at the current RSS and return that RSS in bytes: the baseline
    that `peak_rss_bytes()` is measured against.

    Linux keeps the peak per address space (VmHWM) and resets it when 5 is written to /proc/self/clear_refs. Where
    that is impossible the peak so far is the baseline (`ru_maxrss`, which after fork + exec may still hold the
    parent's peak, hence the reset).
    """
    clear_refs = Path("/proc/self/clear_refs")
    current = _status_bytes("VmRSS")
    if current is not None and clear_refs.exists():
        try:
            clear_refs.write_text("5")
        except OSError:
            return peak_rss_bytes()
        return current
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process, bytes: VmHWM (reset by `reset_peak_rss`) where available, else
    `ru_maxrss` (Linux reports it in KiB)."""
    high_water_mark = _status_bytes("VmHWM")
    if high_water_mark is not None:
        return high_water_mark
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case_in_subprocess(
    module: str, case: dict[str, Any], timeout_s: float | None = None
) -> dict[str, Any]:
    """Run `python -m module --case-json JSON` from the repository root and return the JSON it prints last.

    The child inherits the environment (set `OMP_NUM_THREADS` there to share a busy machine); a failing case
    raises with the end of its stderr.
    """
    command = [sys.executable, "-m", module, CASE_FLAG, json.dumps(case)]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=timeout_s
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"{module} case {case} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
        )
    return json.loads(lines[-1])


def default_doc_path(quick: bool) -> Path:
    """docs/BENCHMARKS.md for a full run; a file in the temporary directory for a `--quick` smoke run, so that
    quick numbers never replace measured ones."""
    if quick:
        return Path(tempfile.gettempdir()) / "BENCHMARKS.quick.md"
    return BENCHMARKS_MD


def add_case_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every case-running benchmark shares: threads, in-process cases (tests), the document to update,
    log-only mode, and the internal one-case flag used by `run_case_in_subprocess`."""
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--in-process", action="store_true", help="run the cases in this process (tests)")
    parser.add_argument(
        "--doc", type=Path, default=None, help="document to update (default: docs/BENCHMARKS.md)"
    )
    parser.add_argument("--no-write", action="store_true", help="only log the results")
    parser.add_argument(CASE_FLAG, dest="case_json", help="internal: run one case given as JSON, print JSON")
