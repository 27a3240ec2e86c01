"""Standard normal noise drawn per video: in a batch, each video draws from its own generator, so a video made in a
batch is the video made alone with the same seed (up to the batch's floating-point reassociation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None
"""Where a batch's random draws come from: one generator per video (row b from `generators[b]`), one generator for the
whole batch, or None (the global RNG)."""


def standard_normal(
    shape: Sequence[int], generators: Generators, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Standard normal `[B, ...]` of `shape` on `device` in `dtype`.

    One generator per row: row b is drawn from `generators[b]` on that generator's device (the same numbers a batch
    of one draws from it). One generator: one draw of the whole shape on its device. None: one draw from the global
    RNG on `device`. Drawn on the generator's device and then moved, so a CPU generator gives the same noise on any
    device.
    """
    if generators is None or isinstance(generators, torch.Generator):
        draw_device = device if generators is None else generators.device
        return torch.randn(tuple(shape), generator=generators, device=draw_device, dtype=dtype).to(device)
    if len(generators) != shape[0]:
        raise ValueError(
            f"{len(generators)} generators for a batch of {shape[0]} videos; pass one generator per video"
        )
    rows = [
        torch.randn(tuple(shape[1:]), generator=gen, device=gen.device, dtype=dtype) for gen in generators
    ]
    return torch.stack([row.to(device) for row in rows])
