"""Sample fixed validation prompts every N training steps and log the videos to TensorBoard."""

from __future__ import annotations

import io
import logging
from contextlib import nullcontext

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

from datamodules.mp4_encoding import video_tensor_to_uint8
from modules.generation import GenerationRequest, seeded_generators
from modules.runtime.precision import InferencePrecision
from modules.training.fsdp import call_through_root

log = logging.getLogger(__name__)


def gif_summary(tag: str, frames: np.ndarray, fps: float) -> Summary:
    """An animated-GIF image summary (what TensorBoard's video panel shows) from uint8 frames `[T, H, W, 3]`,
    encoded with Pillow so logging needs no moviepy."""
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class VideoSampleLogger(L.Callback):
    """Every `every_n_steps` optimizer steps, generate one video per prompt (EMA weights when available)
    with a fixed seed and log them to TensorBoard as animated GIFs `samples/<i>` (images tab) with their prompts.
    Every rank generates the same videos (FSDP needs every rank in each forward); rank 0 writes them.

    Args:
        prompts: the fixed validation prompts.
        every_n_steps: sampling period in optimizer steps (0 disables).
        num_frames, height, width: size of the sampled videos.
        seed: seed of every video's generator, the same every time so samples are comparable across steps (video
            i is the one `python sample.py prompt=<prompt i> seeds=[seed]` makes from the checkpoint).
        fps: frame rate stored with the video.
        use_ema: sample with the EMA weights.
        precision, allow_tf32: generation precision (`inference_precision`, `allow_tf32`; as sample.py's).
    """

    def __init__(
        self,
        prompts: list[str],
        every_n_steps: int,
        num_frames: int,
        height: int,
        width: int,
        seed: int = 0,
        fps: int = 8,
        use_ema: bool = True,
        precision: str = "fp32",
        allow_tf32: bool = True,
    ) -> None:
        self.prompts = list(prompts)
        self.every_n_steps = every_n_steps
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.seed = seed
        self.fps = fps
        self.use_ema = use_ema
        self.precision = InferencePrecision(precision, allow_tf32)
        self._last_logged_step = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps <= 0
            or step == 0
            or step % self.every_n_steps
            or step == self._last_logged_step
        ):
            return
        self._last_logged_step = step
        self._log_samples(trainer, pl_module, step)

    def _log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Every rank generates (under FSDP each forward all-gathers the parameters, so rank 0 cannot generate
        alone); rank 0 writes."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not self.prompts:
            return
        was_training = pl_module.training
        pl_module.eval()
        request = GenerationRequest(
            prompts=self.prompts,
            height=self.height,
            width=self.width,
            num_frames=self.num_frames,
            generators=seeded_generators([self.seed] * len(self.prompts), pl_module.device),
            progress=False,
        )
        weights = pl_module.ema_weights() if self.use_ema else nullcontext()
        try:
            with weights, self.precision.applied(pl_module.device):
                video = call_through_root(trainer.strategy, pl_module, "generate", request).video
        finally:
            pl_module.train(was_training)
        if trainer.is_global_zero:
            self._write(loggers, video, step)

    def _write(self, loggers: list[TensorBoardLogger], video: torch.Tensor, step: int) -> None:
        """The videos `[N, T, 3, H, W]` in [-1, 1] as GIF summaries `samples/<i>`, with their prompts."""
        for logger in loggers:
            writer = logger.experiment
            for index, prompt in enumerate(self.prompts):
                frames = video_tensor_to_uint8(video[index])
                writer._get_file_writer().add_summary(gif_summary(f"samples/{index}", frames, self.fps), step)
                writer.add_text(f"samples/{index}/prompt", prompt, step)
        log.info(
            "logged %d sample videos at step %d <callbacks.video_samples.every_n_steps>",
            len(self.prompts),
            step,
        )
