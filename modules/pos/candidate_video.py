"""Read a retrieved candidate's clip back from its shard, laid out as the sampler will generate it.

The shard is streamed up to the entry's position (`ordinal`, tar order) and the key there must match, so a shard
rewritten since the index was built is reported instead of silently returning another video. The clip is the
centred clip of the configured frame layout (`pos.frame_stride` or `pos.target_fps`, the layout the model was
trained on) at the sampling resolution, through the same PyAV decoder as training.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from datamodules.frame_selection import FrameSelection, VideoTooShortError
from datamodules.tar_samples import iter_tar_samples
from datamodules.video_clip_stream import VIDEO_EXTENSIONS
from datamodules.video_decoding import CorruptVideoError, decode_clip
from modules.pos.candidate_index import IndexEntry


class CandidateVideoError(ValueError):
    """A candidate video cannot be read back (moved shard, changed shard, too short, undecodable)."""


def read_candidate_bytes(entry: IndexEntry) -> bytes:
    """The encoded video of `entry` from its shard."""
    for ordinal, sample in enumerate(iter_tar_samples(entry.url)):
        if ordinal < entry.ordinal:
            continue
        if sample.key != entry.key:
            raise CandidateVideoError(
                f"{entry.url}: sample {entry.ordinal} is '{sample.key}', the index says '{entry.key}'; the shard "
                "changed since the index was built, rebuild it <pool>"
            )
        video = next((sample.members[ext] for ext in VIDEO_EXTENSIONS if sample.members.get(ext)), None)
        if video is None:
            raise CandidateVideoError(f"{entry.url}: sample '{entry.key}' has no video member")
        return video
    raise CandidateVideoError(
        f"{entry.url} ends before sample {entry.ordinal} ('{entry.key}'); rebuild the index <pool>"
    )


def read_candidate_clip(entry: IndexEntry, selection: FrameSelection, *, height: int, width: int) -> Tensor:
    """The centred clip of `entry`: `[T, 3, height, width]` in [-1, 1] (T = selection.num_frames).

    Raises:
        CandidateVideoError: the video cannot be found, decoded, or is shorter than the clip.
    """
    data = read_candidate_bytes(entry)
    try:
        clip = decode_clip(data, selection, height=height, width=width, rng=None)
    except (CorruptVideoError, VideoTooShortError) as error:
        raise CandidateVideoError(
            f"{entry.url}: '{entry.key}': {error} <pos.frame_stride / pos.target_fps, num_frames>"
        ) from error
    return rearrange(torch.from_numpy(clip.frames), "t h w c -> t c h w").float() / 127.5 - 1.0
