"""ART-V's conditions prepared once for many network evaluations: what generation computes per video and per frame
instead of at every sampler step (`model.net.cache_conditions`, conf/model/artv.yaml).

Within one frame's sampler run (ART-V: 50 DPM++ 2S ancestral steps of two evaluations each, every evaluation a
batch of eq. (1)'s condition variants) only x_t and t change. Constant are

- per frame: the stacked variant batch `[V * B]`; from the reference pair both T2I-Adapters' features, the clean
  previous frame z_ref and which rows carry a reference;
- per video (per prompt, per anchor frame in multi-prompt videos): the text keys and values of every text
  cross-attention of both UNets, and the anchor frame's patch tokens with their keys and values in every anchor
  block.

In a guidance batch every ART-V condition takes one of two values, its full value `[B, ...]` or its null value
(`[1, ...]`: the empty prompt, zeros; `ARTVDenoiser.null_condition`). `ConditionRows` keeps both as the rows of one
tensor `[B + 1, ...]`, and what the networks derive from a condition is computed on those B + 1 rows only; a
variant batch picks its rows from them (`variant_rows`) instead of recomputing V copies (eq. (1)'s four variants
show the adapters the reference rows [full, null, full, full]: 4B rows, 2 distinct values).

Caching changes no result: an evaluation on prepared conditions computes what an evaluation on the condition dict
computes, up to floating-point reassociation (tests/test_artv_condition_cache.py: within 1e-5 in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modules.blocks.attention import Attention, KeyValue


@dataclass(frozen=True)
class ConditionCaching:
    """What ART-V generation computes once instead of at every network evaluation.

    Args:
        per_frame: stack the guidance variants and run both adapters once per frame (sampler run) instead of at
            every evaluation; `text` and `anchor` build on it.
        text: project the text keys and values of every text cross-attention once per video (per prompt).
        anchor: cut the anchor tokens and project their keys and values in every anchor block once per anchor frame.
    """

    per_frame: bool = True
    text: bool = True
    anchor: bool = True

    def __post_init__(self) -> None:
        if (self.text or self.anchor) and not self.per_frame:
            raise ValueError(
                f"ConditionCaching: text and anchor caching need per_frame caching (the prepared variant batch "
                f"that carries them), got {self}"
            )

    @classmethod
    def switch(cls, enabled: bool) -> ConditionCaching:
        """Everything cached (`model.net.cache_conditions: true`) or nothing (false)."""
        return cls(per_frame=enabled, text=enabled, anchor=enabled)


@dataclass(frozen=True)
class ConditionRows:
    """A condition's full value `[B, ...]` and null value `[1, ...]` as the rows of `values` `[B + 1, ...]` (the null
    row last), with what the networks derive from them once: the anchor's patch `tokens` `[B + 1, La, C p^2]` (None
    for other conditions or without anchor blocks) and the projected `key_values` of every cross-attention layer
    that reads them (rows as `values`; empty where the layers project them at every call)."""

    values: Tensor
    key_values: dict[Attention, KeyValue] = field(default_factory=dict)
    tokens: Tensor | None = None

    @property
    def full(self) -> Tensor:
        """The full value `[B, ...]`."""
        return self.values[:-1]

    @property
    def batch_size(self) -> int:
        return self.values.shape[0] - 1


def variant_rows(
    dropped_keys: Sequence[tuple[str, ...]], key: str, batch_size: int, device: torch.device
) -> Tensor:
    """The row of a `ConditionRows` that each row of the stacked variant batch reads for condition `key`, int64
    `[V * B]`: sample b of variant v reads row b (the full value), or row B (the null value) where v drops `key`."""
    full = torch.arange(batch_size, device=device)
    null = torch.full((batch_size,), batch_size, device=device)
    return torch.cat([null if key in dropped else full for dropped in dropped_keys])


@dataclass(frozen=True)
class PreparedConditions:
    """What both ART-V UNets read besides x_t and t, for N rows (one evaluation's batch, or a stacked variant batch
    `[V * B]` prepared once for a sampler run).

    text `[N, L, D]`; reference_frame: z_ref, the clean previous frame `[N, C, h, w]`; has_reference: bool `[N]`,
    False where the reference is null; dynamic_features / mask_features: Φdynamic's and Φmask's adapter features,
    one per level `[N, C_l, h / 2**l, w / 2**l]`; anchor_tokens `[N, La, C p^2]` (None without anchor blocks);
    key_values: projected text and anchor contexts per cross-attention layer, rows N (empty: projected per call).
    """

    text: Tensor
    reference_frame: Tensor
    has_reference: Tensor
    dynamic_features: list[Tensor]
    mask_features: list[Tensor]
    anchor_tokens: Tensor | None
    key_values: dict[Attention, KeyValue]

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    def block_kwargs(self) -> dict[str, Any]:
        """The UNets' block kwargs: the anchor tokens and the projected contexts, where there are any."""
        kwargs: dict[str, Any] = {}
        if self.anchor_tokens is not None:
            kwargs["anchor_context"] = self.anchor_tokens
        if self.key_values:
            kwargs["context_key_values"] = self.key_values
        return kwargs
