"""Independent per-sample dropout of named conditions, so that every term of a guidance formula
(classifier-free guidance, ART-V supplementary eq. (1)) has a trained null-condition prediction."""

from __future__ import annotations

import torch
from torch import Tensor


def drop_conditions(
    cond: dict[str, Tensor],
    null_cond: dict[str, Tensor],
    probabilities: dict[str, float],
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Replace condition k of each sample by its null value with probability `probabilities[k]`.

    cond[k]: `[B, ...]`; null_cond[k]: `[1, ...]` or `[B, ...]`. Keys absent from `probabilities` are kept.
    Each key is dropped independently of the others (ART-V: reference, anchor and text).
    """
    unknown = sorted(set(probabilities) - set(cond))
    if unknown:
        raise KeyError(
            f"condition dropout names {unknown}, but the model's conditions are {sorted(cond)} "
            "<model.condition_dropout>"
        )
    out = dict(cond)
    for key, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(
                f"dropout probability for {key!r} must be in [0, 1], got {p} <model.condition_dropout>"
            )
        if p == 0.0:
            continue
        value = cond[key]
        batch = value.shape[0]
        drop = torch.rand(batch, generator=generator, device="cpu") < p
        mask = drop.to(value.device).view(batch, *([1] * (value.dim() - 1)))
        out[key] = torch.where(mask, null_cond[key].to(value.dtype).expand_as(value), value)
    return out
