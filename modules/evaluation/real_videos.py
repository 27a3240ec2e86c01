"""Real clips for FVD and frame FID: from WebDataset shards through the datamodule, or from a folder.

`eval_protocol.real_data` is a `VideoDataModule` config (`conf/data/*.yaml` with eval overrides); its
validation stream supplies the clips: shards read in order, centred clips at the configured frame stride
or fps, resized to cover and centre-cropped, `[B, T, C, H, W]` in [-1, 1]. For the toy protocol its
`prepare_data` first generates the toy shards if they are missing.

A validation pass reads each sample of the set once (at most `val_samples` of them) and pads its last batches;
the padding is dropped (`clip_batches.valid_samples`), as is any clip whose sample key was already used, and the
number of distinct clips is logged when it falls short. With `real_dir=...` the clips come from the video files of a folder instead, decoded with the
same frame selection and size settings of `real_data`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from datamodules.clip_batches import valid_samples
from datamodules.frame_selection import FrameSelection
from modules.evaluation.video_folder import VideoEntry, iter_video_batches, video_files

log = logging.getLogger(__name__)


def _selection(real_data: DictConfig) -> FrameSelection:
    return FrameSelection(
        int(real_data.num_frames),
        frame_stride=real_data.get("frame_stride"),
        target_fps=real_data.get("target_fps"),
    )


def real_clips_from_shards(real_data: DictConfig, max_videos: int) -> Iterator[Tensor]:
    """Batches `[B, T, C, H, W]` of distinct real clips from the datamodule's validation shards."""
    datamodule = instantiate(real_data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    seen: set[str] = set()
    for batch in datamodule.val_dataloader():
        batch = valid_samples(batch)
        keep = []
        for position, key in enumerate(batch["key"]):
            if key not in seen and len(seen) < max_videos:
                seen.add(key)
                keep.append(position)
        if keep:
            yield batch["video"][keep]
        if len(seen) == max_videos:
            break
    if len(seen) < max_videos:
        log.warning(
            "only %d distinct real clips in %s (asked for %d) <eval_protocol.num_real_videos>",
            len(seen),
            real_data.val_urls,
            max_videos,
        )


def real_clips_from_folder(directory: str | Path, real_data: DictConfig, max_videos: int) -> Iterator[Tensor]:
    """Batches `[B, T, C, H, W]` of real clips decoded from the videos of a folder (first `max_videos`)."""
    entries = [VideoEntry(path) for path in video_files(Path(directory), "real_dir")]
    used = 0
    batches = iter_video_batches(
        entries,
        _selection(real_data),
        height=int(real_data.height),
        width=int(real_data.width),
        batch_size=int(real_data.batch_size),
        skip_unreadable=True,
    )
    for videos, _ in batches:
        videos = videos[: max_videos - used]
        used += len(videos)
        yield videos
        if used == max_videos:
            return
    log.warning("only %d usable real videos in %s (asked for %d) <real_dir>", used, directory, max_videos)


def real_clips(real_data: DictConfig, real_dir: str | None, max_videos: int) -> Iterator[Tensor]:
    """Real clip batches from `real_dir` when set, else from the shards of `real_data`."""
    if max_videos < 2:
        raise ValueError(f"eval_protocol.num_real_videos must be >= 2 for a covariance, got {max_videos}")
    if real_dir is not None:
        return real_clips_from_folder(real_dir, real_data, max_videos)
    return real_clips_from_shards(real_data, max_videos)
