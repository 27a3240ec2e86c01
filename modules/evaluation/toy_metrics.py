"""Toy "shapes" accuracy: does a generated video show the colour and motion its prompt asks for?

Each generated video is read back by `datamodules.toy_scorer.score_video` (colour of the moving blob,
direction of its centroid's motion) and compared with the colour and direction parsed from its prompt
("a red circle moving left"). Chance levels: 1/7 for colour, 1/4 for direction, 1/28 for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from datamodules.toy_scorer import score_batch
from modules.evaluation.video_metric import check_video_batch

TOY_KEYS = ("color_accuracy", "direction_accuracy", "joint_accuracy")


class ToyShapesAccuracy:
    """Colour, direction and joint accuracy of generated toy videos (implements `VideoMetric`)."""

    needs_real = False

    def __init__(self) -> None:
        self.hits = dict.fromkeys(TOY_KEYS, 0.0)
        self.count = 0

    def update_generated(self, videos: Tensor, prompts: Sequence[str]) -> None:
        """Score videos `[B, T, C, H, W]` in [-1, 1] against their toy prompts."""
        check_video_batch(videos, "toy accuracy")
        accuracies = score_batch(videos.cpu(), list(prompts))
        for key in TOY_KEYS:
            self.hits[key] += accuracies[key] * len(prompts)
        self.count += len(prompts)

    def update_real(self, videos: Tensor) -> None:
        raise RuntimeError("the toy accuracy scores generated videos only")

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("the toy accuracy saw no generated videos")
        return {f"toy/{key}": self.hits[key] / self.count for key in TOY_KEYS}

    def settings(self) -> dict[str, Any]:
        return {"scorer": "datamodules.toy_scorer.score_video", "videos": self.count}
