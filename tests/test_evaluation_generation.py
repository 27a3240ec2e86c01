"""Protocol generation keeps what it made when interrupted, and resumes without regenerating it."""

from __future__ import annotations

import pytest
import torch

from modules.evaluation.generation import generate_videos
from modules.evaluation.prompts import expand_prompts
from modules.evaluation.video_folder import generated_videos
from modules.generation import GenerationRequest, GenerationResult


class CountingModel:
    """Stands in for VideoDiffusionModule.generate: constant videos, counts the prompts it generates."""

    def __init__(self, fail_after_batches: int | None = None) -> None:
        self.prompts_generated: list[str] = []
        self.batches = 0
        self.fail_after_batches = fail_after_batches

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.fail_after_batches is not None and self.batches == self.fail_after_batches:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.prompts_generated.extend(request.prompts)
        shape = (request.frames_per_video, 3, request.height, request.width)
        noise = torch.stack([torch.rand(shape, generator=generator) for generator in request.generators])
        return GenerationResult(video=noise * 2 - 1)


def _run(model, jobs, folder):
    return generate_videos(
        model, jobs, folder, num_frames=2, height=8, width=8, fps=8, batch_size=2, device=torch.device("cpu")
    )


def test_interrupted_generation_keeps_its_videos_and_resumes(tmp_path):
    jobs = expand_prompts(["a red circle moving left", "a blue square moving up"], 5, seed=0)
    folder = tmp_path / "generated"
    with pytest.raises(KeyboardInterrupt):
        _run(CountingModel(fail_after_batches=2), jobs, folder)
    kept = generated_videos(folder)
    assert [entry.path.name for entry in kept] == ["00000.mp4", "00001.mp4", "00002.mp4", "00003.mp4"]
    assert [entry.prompt for entry in kept] == [job.prompt for job in jobs[:4]]

    resumed = CountingModel()
    _run(resumed, jobs, folder)
    assert resumed.prompts_generated == [jobs[4].prompt]
    assert [entry.prompt for entry in generated_videos(folder)] == [job.prompt for job in jobs]
    assert not list(folder.glob("*.partial"))


def test_resume_regenerates_videos_made_for_other_prompts(tmp_path):
    folder = tmp_path / "generated"
    _run(CountingModel(), expand_prompts(["a red circle moving left"], 2, seed=0), folder)
    other = expand_prompts(["a blue square moving up"], 2, seed=0)
    model = CountingModel()
    _run(model, other, folder)
    assert model.prompts_generated == [job.prompt for job in other]
    assert [entry.prompt for entry in generated_videos(folder)] == [job.prompt for job in other]
