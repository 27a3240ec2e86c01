"""Per-sample dropout of named conditions, so that every term of a guidance formula (classifier-free guidance,
ART-V supplementary eq. (1)) has a trained null-condition prediction.

An entry names one condition (`text: 0.1`: each sample's text is dropped with probability 0.1, independently of
the other entries) or a group joined by `+` (`reference+anchor: 0.3`: with probability 0.3 both are dropped
together). Groups train the prediction where several conditions are null at once more often than independent
drops would (0.1 x 0.1 = 1% of samples): ART-V's text-to-video first frame is generated with reference and
anchor both dropped, which a model trained from scratch must learn from a sizeable share of the batches.
"""

from __future__ import annotations

import torch
from torch import Tensor


def condition_group(entry: str) -> tuple[str, ...]:
    """`"reference+anchor"` -> `("reference", "anchor")`; `"text"` -> `("text",)`."""
    names = tuple(name.strip() for name in entry.split("+"))
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(
            f"condition dropout entry {entry!r}: expected a condition name or distinct names joined by '+' "
            "<model.condition_dropout>"
        )
    return names


def drop_conditions(
    cond: dict[str, Tensor],
    null_cond: dict[str, Tensor],
    probabilities: dict[str, float],
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Replace the condition(s) of each entry of `probabilities` by their null values with its probability.

    cond[k]: `[B, ...]`; null_cond[k]: `[1, ...]` or `[B, ...]`. Keys absent from `probabilities` are kept.
    Entries are drawn independently of each other; a `+` group drops its members together (a sample may lose a
    condition through its own entry or through a group).
    """
    groups = {entry: condition_group(entry) for entry in probabilities}
    unknown = sorted({name for names in groups.values() for name in names} - set(cond))
    if unknown:
        raise KeyError(
            f"condition dropout names {unknown}, but the model's conditions are {sorted(cond)} "
            "<model.condition_dropout>"
        )
    out = dict(cond)
    for entry, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(
                f"dropout probability for {entry!r} must be in [0, 1], got {p} <model.condition_dropout>"
            )
        if p == 0.0:
            continue
        batch = cond[groups[entry][0]].shape[0]
        drop = torch.rand(batch, generator=generator, device="cpu") < p
        for key in groups[entry]:
            value = out[key]
            mask = drop.to(value.device).view(batch, *([1] * (value.dim() - 1)))
            out[key] = torch.where(mask, null_cond[key].to(value.dtype).expand_as(value), value)
    return out
