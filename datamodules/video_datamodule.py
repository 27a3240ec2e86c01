"""LightningDataModule for text-video WebDataset shards (WebVid via video2dataset, or the toy "shapes" set).

Batches (`clip_batches.py`) are `{"video": uint8 [B, T, C, H, W], "caption": list[str], "key": list[str],
"valid": bool [B]}` out of the loaders; `on_after_batch_transfer` turns the video into float [-1, 1] on the
device, so the workers, their queues and the host-to-device copy carry a quarter of float32's bytes.

Epochs (see `video_clip_stream.py`): the training stream is endless; one epoch is
`samples_per_epoch` samples over all ranks, i.e. `samples_per_epoch // world_size // batch_size`
batches on every rank. A validation pass reads the first `val_samples` samples of the validation shards
in order (all of them when `val_samples` is null) exactly once over all ranks and workers, drops the faulty
ones, and pads each worker's last batches (`valid` False) so that every rank runs the same number of
batches; the module leaves the padding out of `val/loss` (a `trainer.limit_val_batches` below 1.0 cuts the
pass short). With `num_workers > 0` the workers persist between epochs and validation passes.

Rank and world size come from `torch.distributed` when it is initialised, else from the attached
Lightning trainer (`global_rank`, `world_size`), else 0 and 1.

With `toy_shards` set (`data=shapes`), `prepare_data` generates the toy shards if they are missing.

Skipped samples: `teardown` logs how many were skipped per reason, summed over the workers and (on rank 0)
over the ranks: for validation those of the last pass, in which each sample is read once; for training every
reading, one per pass over the shards.

Exact resume: the datamodule's `state_dict` (stored in every Lightning checkpoint) holds how many training
batches this rank has consumed since the run started; after a restart the training stream continues with
the next batch of the uninterrupted run (`VideoClipStream.set_epoch`).
"""

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.clip_batches import unit_range_video
from datamodules.frame_selection import FrameSelection
from datamodules.shard_assignment import batches_per_rank
from datamodules.stream_counters import SKIP_REASONS
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
        val_samples: a validation pass reads the first `val_samples` samples of `val_urls` in order, each once
            over all ranks (None: every sample).
        shuffle_buffer: encoded training samples held for shuffling (<= 1: none).
        seed: seed of shard order, shuffling and clip starts.
        pin_memory: DataLoader `pin_memory` (faster host-to-GPU copies).
        skip_corrupt: skip and count faulty samples (True) or raise on the first one (False).
        toy_shards: a toy data generator whose shards `prepare_data` writes when missing (`data=shapes`).
        latent_shards: the shards hold first-stage moments (`python -m datamodules.encode_latents`), batches carry
            `moments` `[B, T, M, h, w]` instead of `video` (`data=webvid_latents`, `data=shapes_latents`).
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
        val_samples: int | None,
        shuffle_buffer: int,
        seed: int,
        pin_memory: bool,
        skip_corrupt: bool = True,
        toy_shards: ShapesShardSet | None = None,
        latent_shards: bool = False,
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
        self.latent_shards = latent_shards
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
            "latent_shards": self.latent_shards,
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
                samples_key="data.val_samples",
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

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """uint8 video `[B, T, C, H, W]` -> float [-1, 1] on the device the batch was moved to."""
        if "video" in batch:
            batch["video"] = unit_range_video(batch["video"])
        return batch

    def skip_counts(self) -> dict[str, dict[str, int]]:
        """Skipped samples per reason on this rank (all its dataloader workers), for `train` and `val` (the last
        validation pass)."""
        return {
            name: dataset.skip_counts()
            for name, dataset in (("train", self.train_dataset), ("val", self.val_dataset))
            if dataset is not None
        }

    def teardown(self, stage: str | None = None) -> None:
        """Log how many samples were skipped per reason; under torch.distributed rank 0 logs the sum over the
        ranks (a collective every rank joins), otherwise each rank its own."""
        rank, world_size = self._rank_and_world_size()
        summed = world_size > 1 and self.trainer is not None and dist.is_available() and dist.is_initialized()
        scope = f"over {world_size} ranks" if summed else f"on rank {rank}"
        what = {
            "train": "readings of faulty training samples",
            "val": "faulty samples in the last validation pass",
        }
        for name, counts in self.skip_counts().items():
            if summed:
                counts = self._sum_over_ranks(counts)
            skipped = {reason: count for reason, count in counts.items() if count}
            if skipped and (rank == 0 or not summed):
                log.warning(
                    "skipped %d %s %s: %s <data.skip_corrupt=true>",
                    sum(skipped.values()),
                    what[name],
                    scope,
                    skipped,
                )

    def _sum_over_ranks(self, counts: dict[str, int]) -> dict[str, int]:
        """Counts summed over the ranks (a collective: every rank calls it with the same reasons)."""
        strategy = self.trainer.strategy
        local = torch.tensor([counts[reason] for reason in SKIP_REASONS], device=strategy.root_device)
        total = strategy.reduce(local, reduce_op="sum").cpu()
        return {reason: int(total[column]) for column, reason in enumerate(SKIP_REASONS)}

    def _loader(self, dataset: VideoClipStream) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=True,
            # workers start once, not at every epoch (an ART-V epoch is ~208 steps) and validation pass
            persistent_workers=self.num_workers > 0,
        )

    def _rank_and_world_size(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1
