"""The clean end of a multi-process run."""

from __future__ import annotations

import gc

import torch.distributed as dist


def finish_process_group() -> None:
    """Wait for every rank, then tear the default process group down; a no-op outside a distributed run.

    Call it once a rank's work has finished normally, never from an error path (a barrier there would wait for a
    rank that has died). Gloo's worker threads release a finished collective's tensors a moment after the caller
    sees it complete; that release takes the GIL, and if the interpreter is already finalising the thread is
    unwound inside a destructor and the process aborts ("terminate called without an active exception"). So
    the group is destroyed while Python is alive: the barrier lets every rank's last collective (an FSDP
    all-gather, a DDP all-reduce) finish, and collecting the finished run's modules, which hold the group, runs
    its destructor, which joins those threads. Call it after the trainer and model are out of scope.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()  # the Lightning strategy and FSDP units form cycles that keep the group alive until collected
