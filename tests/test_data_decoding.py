"""Frame selection (stride, target fps, clip start) and PyAV decoding: indices, seeking, resize, errors."""

import numpy as np
import pytest

from datamodules.frame_selection import FrameSelection, VideoTooShortError
from datamodules.mp4_encoding import encode_mp4
from datamodules.video_decoding import CorruptVideoError, ResizeGeometry, decode_clip
from tests.helpers.data_shards import index_pattern_frames, index_video, read_frame_index


def decoded_indices(frames: np.ndarray) -> list[int]:
    return [read_frame_index(frame) for frame in frames]


def test_index_pattern_survives_h264_and_resize():
    clip = decode_clip(index_video(40), FrameSelection(40, frame_stride=1), height=32, width=32)
    assert decoded_indices(clip.frames) == list(range(40))


def test_stride_selection_takes_every_kth_frame_from_centred_start():
    selection = FrameSelection(8, frame_stride=3)
    clip = decode_clip(index_video(64), selection, height=64, width=64)
    # span 22 frames; centred start (64 - 22) // 2 = 21
    expected = list(range(21, 21 + 8 * 3, 3))
    assert clip.indices == expected
    assert decoded_indices(clip.frames) == expected
    assert clip.frames.shape == (8, 64, 64, 3)
    assert clip.frames.dtype == np.uint8


def test_target_fps_8_on_24fps_source_takes_every_third_frame():
    selection = FrameSelection(8, target_fps=8)
    clip = decode_clip(index_video(48, fps=24), selection, height=32, width=32, rng=np.random.default_rng(3))
    start = clip.indices[0]
    assert clip.indices == [start + 3 * k for k in range(8)]
    assert decoded_indices(clip.frames) == clip.indices


def test_target_fps_with_non_integer_ratio_rounds_to_nearest_frame():
    # 30 fps read at 8 fps: frame k at time k / 8 s is source frame round(3.75 k)
    assert FrameSelection(8, target_fps=8).offsets(30) == [0, 4, 8, 11, 15, 19, 23, 26]
    # a slower source than the target repeats frames
    assert FrameSelection(4, target_fps=8).offsets(4) == [0, 1, 1, 2]


def test_random_start_covers_every_valid_start_and_is_seeded():
    selection = FrameSelection(4, frame_stride=2)
    rng = np.random.default_rng(0)
    starts = {selection.indices(20, 24, rng)[0] for _ in range(400)}
    assert starts == set(range(20 - 7 + 1))
    first = [selection.indices(20, 24, np.random.default_rng(5))[0] for _ in range(3)]
    assert len(set(first)) == 1


def test_random_start_clip_decodes_its_own_indices():
    selection = FrameSelection(6, frame_stride=4)
    for seed in range(3):
        clip = decode_clip(index_video(60), selection, height=32, width=32, rng=np.random.default_rng(seed))
        assert decoded_indices(clip.frames) == clip.indices


def test_seek_decodes_only_from_the_keyframe_before_the_clip():
    video = index_video(200, keyframe_interval=10, height=32, width=32)
    selection = FrameSelection(4, frame_stride=2)
    # the centred clip covers frames 96..102 of 200
    clip = decode_clip(video, selection, height=32, width=32)
    assert clip.indices == [96, 98, 100, 102]
    assert decoded_indices(clip.frames) == clip.indices
    # key frames every 10 frames: decoding starts at 90 and stops at 102
    assert clip.frames_decoded <= 13
    assert clip.frames_decoded < 200


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ((48, 64), (32, 32), ResizeGeometry(32, 43, 0, 5, 32, 32)),
        ((64, 48), (32, 32), ResizeGeometry(43, 32, 5, 0, 32, 32)),
        ((64, 64), (32, 48), ResizeGeometry(48, 48, 8, 0, 32, 48)),
        ((256, 320), (256, 256), ResizeGeometry(256, 320, 0, 32, 256, 256)),
    ],
)
def test_resize_covers_the_target_then_centre_crops(source, target, expected):
    assert ResizeGeometry.cover(*source, *target) == expected


def test_centre_crop_of_a_wide_video_keeps_its_middle():
    frames = np.zeros((2, 32, 64, 3), dtype=np.uint8)
    frames[:, :, 16:48] = 255  # the middle half is white
    clip = decode_clip(encode_mp4(frames, 8), FrameSelection(2, frame_stride=1), height=16, width=16)
    assert clip.frames.shape == (2, 16, 16, 3)
    assert clip.frames.min() > 200


def test_too_short_video_raises():
    with pytest.raises(VideoTooShortError, match="needs 29"):
        decode_clip(index_video(20), FrameSelection(8, frame_stride=4), height=32, width=32)


def test_corrupt_bytes_raise_corrupt_video_error():
    data = bytearray(index_video(20))
    with pytest.raises(CorruptVideoError):
        decode_clip(b"not a video at all" * 50, FrameSelection(2, frame_stride=1), height=32, width=32)
    # a valid header followed by garbage where the bitstream should be
    data[len(data) // 3 :] = bytes(len(data) - len(data) // 3)
    with pytest.raises((CorruptVideoError, VideoTooShortError)):
        decode_clip(bytes(data), FrameSelection(16, frame_stride=1), height=32, width=32)


def test_selection_needs_exactly_one_of_stride_and_fps():
    with pytest.raises(ValueError, match="exactly one"):
        FrameSelection(8)
    with pytest.raises(ValueError, match="exactly one"):
        FrameSelection(8, frame_stride=2, target_fps=8)


def test_index_pattern_round_trip_without_video():
    frames = index_pattern_frames(256, height=8, width=64)
    assert decoded_indices(frames) == list(range(256))
