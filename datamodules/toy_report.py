"""What a person and the toy scorer see in a folder of generated toy videos: a captioned contact sheet and a table.

    python -m datamodules.toy_report outputs/demo                 # table; contact sheet outputs/demo/contact_sheet.png

Each `<prompt-slug>_seed<n>.mp4` (the names sample.py writes) is read back; its caption is the slug with dashes as
spaces ("a-red-circle-moving-left_seed0.mp4" -> "a red circle moving left"). The contact sheet shows every video as
one row of frames, enlarged, under its caption and what `datamodules.toy_scorer` reads from it; the table lists the
same and ends with how many videos show both their caption's colour and direction.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datamodules.toy_scorer import ToyVideoScore, parse_caption, read_rgb, score_video

_SEED_SUFFIX = re.compile(r"_seed\d+$")
ZOOM = 3  # frames are enlarged so a 32-px toy video is readable
GAP = 4  # pixels between frames and rows
CAPTION_HEIGHT = 28  # two text lines above every row


@dataclass(frozen=True)
class ReportRow:
    """One video: its file, caption, and what the scorer reads (`matches`: colour and direction both right)."""

    path: Path
    caption: str
    score: ToyVideoScore

    @property
    def matches(self) -> bool:
        color, _, direction = parse_caption(self.caption)
        return self.score.color == color and self.score.direction == direction


def caption_of(path: Path) -> str:
    """The caption of a video file written by sample.py: `a-red-circle-moving-left_seed0.mp4` -> the words."""
    return _SEED_SUFFIX.sub("", path.stem).replace("-", " ")


def score_folder(folder: Path) -> list[ReportRow]:
    """Score every mp4 of `folder` (sorted by name) against the caption in its file name."""
    paths = sorted(folder.glob("*.mp4"))
    if not paths:
        raise FileNotFoundError(f"no mp4 videos in {folder}")
    return [ReportRow(path, caption_of(path), score_video(path)) for path in paths]


def contact_sheet(rows: Sequence[ReportRow], path: Path) -> Path:
    """A PNG with one row of enlarged frames per video, captioned with the prompt and the scorer's reading."""
    videos = [(read_rgb(row.path) * 255.0).round().astype(np.uint8) for row in rows]
    frames = max(len(video) for video in videos)
    height, width = videos[0].shape[1] * ZOOM, videos[0].shape[2] * ZOOM
    sheet_width = max(frames * (width + GAP) + GAP, 360)
    sheet = Image.new(
        "RGB", (sheet_width, len(rows) * (height + CAPTION_HEIGHT + GAP) + GAP), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    top = GAP
    for row, video in zip(rows, videos, strict=True):
        verdict = "as asked" if row.matches else "NOT as asked"
        draw.text((GAP, top), f'"{row.caption}"', fill=(0, 0, 0), font=font)
        seen = f"scorer sees: {row.score.color} shape moving {row.score.direction} ({verdict})"
        draw.text(
            (GAP, top + CAPTION_HEIGHT // 2), seen, fill=(0, 90, 0) if row.matches else (170, 0, 0), font=font
        )
        top += CAPTION_HEIGHT
        for index, frame in enumerate(video):
            image = Image.fromarray(frame).resize((width, height), Image.Resampling.NEAREST)
            sheet.paste(image, (GAP + index * (width + GAP), top))
        top += height + GAP
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def format_table(rows: Sequence[ReportRow]) -> str:
    """A plain-text table of the rows and the count of videos that show their caption."""
    header = f"{'video':<44} {'prompt':<30} {'colour seen':<12} {'direction seen':<15} ok"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.path.name:<44} {row.caption:<30} {row.score.color or '-':<12} {row.score.direction or '-':<15} "
            f"{'yes' if row.matches else 'no'}"
        )
    hits = sum(row.matches for row in rows)
    lines.append(f"{hits} of {len(rows)} videos show their prompt's colour and direction")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Contact sheet and scorer table of a folder of toy videos.")
    parser.add_argument("folder", type=Path, help="folder of <prompt-slug>_seed<n>.mp4 videos")
    parser.add_argument(
        "--sheet", type=Path, default=None, help="PNG to write (default: FOLDER/contact_sheet.png)"
    )
    args = parser.parse_args(argv)
    rows = score_folder(args.folder)
    sheet = contact_sheet(rows, args.sheet or args.folder / "contact_sheet.png")
    print(format_table(rows))
    print(f"contact sheet: {sheet}")


if __name__ == "__main__":
    main()
