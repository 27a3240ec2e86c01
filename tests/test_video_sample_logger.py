"""Sample videos really reach the TensorBoard event file (as animated GIFs)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from callbacks.video_sample_logger import gif_summary


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
