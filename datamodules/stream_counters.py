"""Counters shared between a dataset and its dataloader worker processes.

The counters live in shared-memory tensors created before the workers start, one row per worker (row 0
is the main process when there are no workers), so the main process can read every worker's counts:
skipped samples per reason, decoded clips and frames, and how many times each worker has started
iterating (its epoch number in a run without restarts). A validation worker zeroes its own row when it starts
a pass (`reset_slot`), so after a pass the sums are that pass's counts.
"""

import torch

# why a sample was skipped (the shard writer's probe uses the same names, datamodules/video_probe.py)
SKIP_REASONS = (
    "missing_video",  # no video member (mp4, webm, ...)
    "empty",  # a zero-byte video
    "corrupt",  # not decodable: bad container, broken bitstream, no frame size or rate
    "no_video_stream",  # a container without video (audio only)
    "too_short",  # fewer frames than the clip spans
    "missing_caption",  # neither a .txt nor a json "caption"
    "bad_metadata",  # a .json member that is not a JSON object
    "unreadable_shard",  # lost where its shard could not be read (truncated, failed download)
)


class StreamCounters:
    """Shared-memory counters of a video stream, `num_slots` rows (one per dataloader worker)."""

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self._skips = torch.zeros(num_slots, len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        self._decoded = torch.zeros(num_slots, 2, dtype=torch.int64).share_memory_()
        self._iterations = torch.zeros(num_slots, dtype=torch.int64).share_memory_()

    def add_skip(self, slot: int, reason: str) -> int:
        """Count one skipped sample; returns this slot's running count for `reason`."""
        column = SKIP_REASONS.index(reason)
        self._skips[slot, column] += 1
        return int(self._skips[slot, column])

    def add_decoded(self, slot: int, frames_decoded: int) -> None:
        """Count one decoded clip that took `frames_decoded` decoded frames."""
        self._decoded[slot, 0] += 1
        self._decoded[slot, 1] += frames_decoded

    def start_iteration(self, slot: int) -> int:
        """Count the start of an iteration; returns how many this slot had started before."""
        started = int(self._iterations[slot])
        self._iterations[slot] += 1
        return started

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per reason, summed over all workers."""
        totals = self._skips.sum(dim=0)
        return {reason: int(totals[column]) for column, reason in enumerate(SKIP_REASONS)}

    def decode_counts(self) -> dict[str, int]:
        """Decoded clips and decoded frames (seek overhead included), summed over all workers."""
        clips, frames = (int(value) for value in self._decoded.sum(dim=0))
        return {"clips": clips, "frames_decoded": frames}

    def reset_slot(self, slot: int) -> None:
        """Zero one slot's skip and decode counts (a validation worker starting a pass)."""
        self._skips[slot].zero_()
        self._decoded[slot].zero_()

    def reset_iterations(self) -> None:
        """Zero the iteration counts (not while workers are running)."""
        self._iterations.zero_()
