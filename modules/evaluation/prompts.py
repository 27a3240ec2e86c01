"""Prompt lists of the evaluation protocols and the (prompt, seed) jobs generated from them.

Sources (each is a `_target_` of `eval_protocol.prompts`):
- :func:`read_prompt_file`: a TXT file (one prompt per line, blank lines and `#` comments skipped) or a
  CSV file with a header (the prompt column named by `column`), e.g. MSR-VTT test captions;
- :func:`ucf101_class_prompts`: UCF-101's `classInd.txt` ("1 ApplyEyeMakeup") -> "apply eye makeup",
  formatted with a template;
- :func:`toy_prompts`: every colour x shape x direction caption of the toy "shapes" data.

:func:`expand_prompts` turns a list into `num_videos` jobs: one per prompt (`null`), a seeded random
subset (fewer), or the list cycled in order (more; so 10,000 videos over 101 classes are class-balanced
to +-1). Video `i` is generated from noise seeded with `seed + i`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.toy_shapes import COLORS, DIRECTIONS, SHAPES, toy_caption

_CAMEL_CASE_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@dataclass(frozen=True)
class PromptJob:
    """Video `index` of an evaluation: its prompt and noise seed."""

    index: int
    prompt: str
    seed: int


def _existing_file(path: str | Path, config_key: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"prompt file not found: {file} <{config_key}>")
    return file


def read_prompt_file(path: str | Path, column: str | None = None) -> list[str]:
    """Prompts from a `.txt` (one per line) or `.csv` (header; `column` names the prompt column, optional
    when the file has a single column) file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown column, or no prompt at all.
    """
    file = _existing_file(path, "eval_protocol.prompts.path")
    if file.suffix.lower() == ".csv":
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            if column is None and len(columns) == 1:
                column = columns[0]
            if column not in columns:
                raise ValueError(
                    f"{file}: no prompt column {column!r} among {columns} <eval_protocol.prompts.column>"
                )
            prompts = [(row[column] or "").strip() for row in reader]
        prompts = [prompt for prompt in prompts if prompt]
    else:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
        prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{file} holds no prompt <eval_protocol.prompts.path>")
    return prompts


def class_name_to_words(name: str) -> str:
    """`"ApplyEyeMakeup"` -> `"apply eye makeup"`, `"YoYo"` -> `"yo yo"`, `"Skiing"` -> `"skiing"`."""
    words = _CAMEL_CASE_BOUNDARY.sub(" ", name.replace("_", " "))
    return " ".join(words.split()).lower()


def ucf101_class_prompts(path: str | Path, template: str = "{}") -> list[str]:
    """One prompt per UCF-101 class from `classInd.txt` lines `"<index> <ClassName>"` (or bare names).

    Args:
        path: the class list.
        template: `str.format` template with one `{}` for the class name in words, e.g. `"a person {}"`.
    """
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain one '{{}}' <eval_protocol.prompts.template>")
    names = [line.split()[-1] for line in read_prompt_file(path)]
    return [template.format(class_name_to_words(name)) for name in names]


def toy_prompts() -> list[str]:
    """All 84 toy captions, in the order the toy data set cycles through them (colour fastest)."""
    return [
        toy_caption(color, shape, direction)
        for direction in DIRECTIONS
        for shape in SHAPES
        for color in COLORS
    ]


def expand_prompts(prompts: list[str], num_videos: int | None, seed: int) -> list[PromptJob]:
    """`num_videos` jobs from `prompts` (see the module docstring); job `i` has seed `seed + i`."""
    if not prompts:
        raise ValueError("no prompts to generate from <eval_protocol.prompts>")
    if num_videos is None:
        chosen = list(prompts)
    elif num_videos < 1:
        raise ValueError(f"eval_protocol.num_videos must be >= 1 or null, got {num_videos}")
    elif num_videos <= len(prompts):
        picked = np.sort(np.random.default_rng(seed).choice(len(prompts), size=num_videos, replace=False))
        chosen = [prompts[i] for i in picked]
    else:
        chosen = [prompts[i % len(prompts)] for i in range(num_videos)]
    return [PromptJob(index, prompt, seed + index) for index, prompt in enumerate(chosen)]
