"""LightningDataModule for text-video WebDataset shards (WebVid via video2dataset, or the toy "shapes" set).

Batches are `{"video": float [B, T, C, H, W] in [-1, 1], "caption": list[str], "key": list[str]}`.

Epochs (see `video_clip_stream.py`): the training stream is endless; one epoch is
`samples_per_epoch` samples over all ranks, i.e. `samples_per_epoch // world_size // batch_size`
batches on every rank. Validation yields `val_samples // world_size // batch_size` batches per rank
from the validation shards read in order, cycling a smaller set and truncating a larger one.

Rank and world size come from `torch.distributed` when it is initialised, else from the attached
Lightning trainer (`global_rank`, `world_size`), else 0 and 1.

With `toy_shards` set (`data=shapes`), `prepare_data` generates the toy shards if they are missing.

Exact resume: the datamodule's `state_dict` (stored in every Lightning checkpoint) holds how many training
batches this rank has consumed since the run started; after a restart the training stream continues with
the next batch of the uninterrupted run (`VideoClipStream.set_epoch`).
"""

import logging
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.frame_selection import FrameSelection
from datamodules.shard_assignment import batches_per_rank
from datamodules.tar_samples import expand_shard_urls
from datamodules.toy_shapes import ShapesShardSet
from datamodules.video_clip_stream import VideoClipStream

log = logging.getLogger(__name__)


class VideoDataModule(LightningDataModule):
    """Video clips and captions from WebDataset shards.

    Args:
        train_urls: training shards: path, directory of `*.tar`, brace pattern, `pipe:` URL, or a list.
        val_urls: validation shards, same forms; None for no validation.
        batch_size: clips per batch on each rank.
        num_workers: dataloader worker processes per rank.
        num_frames: frames per clip (T).
        frame_stride: take every `frame_stride`-th source frame (SCVideo: 8); null to use `target_fps`.
        target_fps: resample the source to this frame rate (ART-V: 8); null to use `frame_stride`.
        height, width: clip frame size (resize to cover, centre crop).
        samples_per_epoch: training samples per epoch over all ranks.
        val_samples: validation samples per validation run over all ranks.
        shuffle_buffer: encoded training samples held for shuffling (<= 1: none).
        seed: seed of shard order, shuffling and clip starts.
        pin_memory: DataLoader `pin_memory` (faster host-to-GPU copies).
        skip_corrupt: skip and count faulty samples (True) or raise on the first one (False).
        toy_shards: a toy data generator whose shards `prepare_data` writes when missing (`data=shapes`).
    """

    def __init__(
        self,
        train_urls: str | Sequence[str],
        val_urls: str | Sequence[str] | None,
        batch_size: int,
        num_workers: int,
        num_frames: int,
        frame_stride: int | None,
        target_fps: float | None,
        height: int,
        width: int,
        samples_per_epoch: int,
        val_samples: int,
        shuffle_buffer: int,
        seed: int,
        pin_memory: bool,
        skip_corrupt: bool = True,
        toy_shards: ShapesShardSet | None = None,
    ) -> None:
        super().__init__()
        self.selection = FrameSelection(num_frames, frame_stride=frame_stride, target_fps=target_fps)
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.train_urls = train_urls
        self.val_urls = val_urls
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.height = height
        self.width = width
        self.samples_per_epoch = samples_per_epoch
        self.val_samples = val_samples
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.pin_memory = pin_memory
        self.skip_corrupt = skip_corrupt
        self.toy_shards = toy_shards
        self.train_dataset: VideoClipStream | None = None
        self.val_dataset: VideoClipStream | None = None
        self._resume_batches: int | None = None

    def prepare_data(self) -> None:
        """Generate the toy shards if this is the toy data set and they are missing (local rank 0 only)."""
        if self.toy_shards is not None:
            self.toy_shards.generate()

    def setup(self, stage: str | None = None) -> None:
        """Expand the shard URLs and build the datasets for this rank."""
        rank, world_size = self._rank_and_world_size()
        common = {
            "selection": self.selection,
            "height": self.height,
            "width": self.width,
            "batch_size": self.batch_size,
            "rank": rank,
            "world_size": world_size,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "skip_corrupt": self.skip_corrupt,
        }
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = VideoClipStream(
                expand_shard_urls(self.train_urls, "data.train_urls"),
                num_samples=self.samples_per_epoch,
                training=True,
                shuffle_buffer=self.shuffle_buffer,
                config_key="data.train_urls",
                **common,
            )
        if stage in (None, "fit", "validate") and self.val_dataset is None and self.val_urls is not None:
            self.val_dataset = VideoClipStream(
                expand_shard_urls(self.val_urls, "data.val_urls"),
                num_samples=self.val_samples,
                training=False,
                config_key="data.val_urls",
                **common,
            )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        # resuming continues the stream where the checkpoint left it (epoch and batch within the epoch)
        epoch, consumed = (self.trainer.current_epoch if self.trainer is not None else 0), 0
        if self._resume_batches is not None:
            rank_batches = batches_per_rank(
                self.samples_per_epoch, self.batch_size, self.train_dataset.world_size
            )
            epoch, consumed = divmod(self._resume_batches, rank_batches)
            self._resume_batches = None
        self.train_dataset.set_epoch(epoch, consumed)
        return self._loader(self.train_dataset)

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position: batches this rank has consumed since the run started, all epochs."""
        if self.trainer is None:
            return {}
        return {"train_batches_consumed": self.trainer.fit_loop.epoch_loop.batch_progress.total.processed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training stream after the batches counted in `state_dict` (from `state_dict()`)."""
        if "train_batches_consumed" in state_dict:
            self._resume_batches = int(state_dict["train_batches_consumed"])

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset)

    def skip_counts(self) -> dict[str, dict[str, int]]:
        """Skipped samples per reason on this rank (all its dataloader workers), for `train` and `val`."""
        return {
            name: dataset.skip_counts()
            for name, dataset in (("train", self.train_dataset), ("val", self.val_dataset))
            if dataset is not None
        }

    def teardown(self, stage: str | None = None) -> None:
        """Log how many samples were skipped, per reason."""
        rank, _ = self._rank_and_world_size()
        for name, counts in self.skip_counts().items():
            skipped = {reason: count for reason, count in counts.items() if count}
            if skipped:
                log.warning("skipped %s samples on rank %d: %s <data.skip_corrupt=true>", name, rank, skipped)

    def _loader(self, dataset: VideoClipStream) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=True,
        )

    def _rank_and_world_size(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1
