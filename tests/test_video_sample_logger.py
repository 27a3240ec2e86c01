"""Sample videos really reach the TensorBoard event file (as animated GIFs), written by rank 0 after every rank
generated them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from callbacks.video_sample_logger import VideoSampleLogger, gif_summary
from modules.generation import GenerationRequest, GenerationResult


def test_gif_summary_round_trips_through_an_event_file(tmp_path):
    frames = np.zeros((4, 8, 10, 3), dtype=np.uint8)
    for t in range(4):
        frames[t, :, t * 2 : t * 2 + 2, 0] = 255  # a red bar moving right
    writer = SummaryWriter(str(tmp_path))
    writer._get_file_writer().add_summary(gif_summary("samples/0", frames, fps=8), 7)
    writer.close()

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("samples/0")
    assert image.step == 7
    assert (image.width, image.height) == (10, 8)
    gif = Image.open(io.BytesIO(image.encoded_image_string))
    assert gif.n_frames == 4
    gif.seek(3)
    last = np.asarray(gif.convert("RGB"))
    assert last[:, 6:8, 0].min() > 200 and last[:, :6, 0].max() < 50
    assert torch.tensor(last).shape == (8, 10, 3)


class GeneratingModule:
    """What the callback uses of the LightningModule: counts generations and EMA swaps."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.training = True
        self.generated = 0
        self.swaps = 0
        self.requests: list[GenerationRequest] = []

    def eval(self) -> None:
        self.training = False

    def train(self, mode: bool = True) -> None:
        self.training = mode

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        self.swaps += 1
        yield

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self.generated += 1
        self.requests.append(request)
        return GenerationResult(video=torch.zeros(request.batch_size, request.frames_per_video, 3, 8, 8))


def test_every_rank_generates_and_rank_zero_writes(tmp_path):
    """Under FSDP every forward all-gathers the parameters, so every rank must generate; only rank 0 writes."""
    for rank in (0, 1):
        callback = VideoSampleLogger(["a", "b"], every_n_steps=2, num_frames=2, height=8, width=8)
        logger = TensorBoardLogger(str(tmp_path / f"rank{rank}"), name=None, version="")
        trainer = SimpleNamespace(global_step=2, loggers=[logger], is_global_zero=rank == 0, strategy=None)
        module = GeneratingModule()
        callback.on_train_batch_end(trainer, module, None, None, 0)
        assert (module.generated, module.swaps, module.training) == (1, 1, True)
        if rank:  # the logger's writer is created on first use: rank 1 never used it
            assert not (tmp_path / "rank1").exists()
        else:
            logger.finalize("success")
            events = EventAccumulator(str(tmp_path / "rank0"), size_guidance={"images": 0})
            events.Reload()
            assert [image.step for image in events.Images("samples/1")] == [2]
