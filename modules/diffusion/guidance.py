"""Guidance: combine the eps predictions of several condition variants, computed in ONE batched forward.

Every guidance object is called as

    guidance(eps_model, x_t, t, cond, null_cond) -> eps

with `eps_model(x_t [B, ...], t int64 [B], cond) -> eps [B, ...]`, `cond` a dict of named conditions (batch
first, batch size B) and `null_cond` the value each condition takes when it is dropped (batch size 1 or B;
e.g. `{"text": empty-prompt embedding [1, 77, D]}`). A guidance object lists the condition variants it
needs (`dropped_keys`: per variant, the conditions it replaces by their null values; `()` is the full
condition); they are concatenated along the batch dimension (x_t and t repeated), the model runs once on
`V * B` samples, and the output is split back into V predictions and combined. Variant v is in rows
v*B .. (v+1)*B - 1; `full_condition_rows` says which rows carry the full condition.

A sampler run evaluates the same condition variants at every step. `PreparedGuidance` binds a guidance object to
conditions the model prepared once for the whole run (stacked along the batch and precomputed as the model sees
fit, e.g. ART-V's adapter features and cross-attention keys and values): each step then only repeats x_t and t.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

EpsModel = Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor]
Conditions = dict[str, Tensor]


def _check_inputs(x_t: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> None:
    """Batch sizes of x_t `[B, ...]`, t `[B]` (or `[B, T]`, a step per frame) and every condition `[B, ...]` must
    agree."""
    batch_size = x_t.shape[0]
    if t.ndim not in (1, 2) or t.shape[0] != batch_size:
        raise ValueError(f"guidance: t must have shape [B] = [{batch_size}] or [B, T], got {list(t.shape)}")
    for key, value in cond.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"guidance: cond['{key}'] must be a Tensor, got {type(value).__name__}")
        if value.ndim == 0 or value.shape[0] != batch_size:
            raise ValueError(
                f"guidance: cond['{key}'] must have batch size B = {batch_size} (x_t's), got shape {list(value.shape)}"
            )


def _null_value(key: str, like: Tensor, null_cond: Mapping[str, Tensor] | None, who: str) -> Tensor:
    """null_cond[key] `[1 or B, ...]` expanded to like's shape `[B, ...]`, on like's device and dtype."""
    if null_cond is None or key not in null_cond:
        raise ValueError(
            f"{who}: condition '{key}' is dropped but null_cond has no value for it "
            f"(null_cond keys: {sorted(null_cond or {})}); pass its null value (e.g. the empty-prompt "
            "embedding for 'text', zeros for image conditions)"
        )
    null = null_cond[key]
    if not isinstance(null, Tensor):
        raise TypeError(f"{who}: null_cond['{key}'] must be a Tensor, got {type(null).__name__}")
    if null.shape[1:] != like.shape[1:] or null.shape[0] not in (1, like.shape[0]):
        raise ValueError(
            f"{who}: null_cond['{key}'] has shape {list(null.shape)}; expected [1 or {like.shape[0]}, "
            f"{', '.join(str(size) for size in like.shape[1:])}] to match cond['{key}']"
        )
    return null.to(device=like.device, dtype=like.dtype).expand_as(like)


def _drop(cond: Conditions, keys: list[str], null_cond: Mapping[str, Tensor] | None, who: str) -> Conditions:
    """A copy of cond with each condition in keys replaced by its null value."""
    return {
        key: _null_value(key, value, null_cond, who) if key in keys else value for key, value in cond.items()
    }


def stack_variants(variants: list[Conditions]) -> Conditions:
    """The condition variants concatenated along the batch: `[V * B, ...]` per key, variant v in rows
    v*B .. (v+1)*B - 1 (a single variant as it is)."""
    if len(variants) == 1:
        return variants[0]
    return {key: torch.cat([variant[key] for variant in variants]) for key in variants[0]}


def eps_of_stacked(
    eps_model: Callable[[Tensor, Tensor, Any], Tensor],
    x_t: Tensor,
    t: Tensor,
    stacked_cond: Any,
    num_variants: int,
) -> list[Tensor]:
    """Run eps_model once on x_t `[B, ...]` and t `[B]` repeated `num_variants` times with the stacked conditions
    of the V variants (whatever the model reads: a dict of `[V * B, ...]` tensors, or what it prepared from one);
    returns one prediction `[B, ...]` per variant."""
    if num_variants == 1:
        return [eps_model(x_t, t, stacked_cond)]
    x_in = torch.cat([x_t] * num_variants)
    t_in = torch.cat([t] * num_variants)
    eps = eps_model(x_in, t_in, stacked_cond)
    if eps.shape != x_in.shape:
        raise ValueError(f"eps_model returned shape {list(eps.shape)}, expected x_t's {list(x_in.shape)}")
    return list(eps.split(x_t.shape[0]))


def batched_eps(eps_model: EpsModel, x_t: Tensor, t: Tensor, variants: list[Conditions]) -> list[Tensor]:
    """Run eps_model once on all condition variants; returns one prediction `[B, ...]` per variant.

    x_t: `[B, ...]`, t: `[B]`; the model sees `[V * B, ...]` with variant v in rows v*B .. (v+1)*B - 1.
    """
    return eps_of_stacked(eps_model, x_t, t, stack_variants(variants), len(variants))


class Guidance(ABC):
    """Base class: `dropped_keys` lists the condition variants, `combine` merges their predictions."""

    def __call__(
        self,
        eps_model: EpsModel,
        x_t: Tensor,
        t: Tensor,
        cond: Conditions,
        null_cond: Conditions | None = None,
    ) -> Tensor:
        """Guided eps `[B, ...]` for x_t `[B, ...]` at int64 steps t `[B]`."""
        _check_inputs(x_t, t, cond)
        unknown = sorted(set(null_cond or {}) - set(cond))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: null_cond has keys {unknown} that cond lacks (cond keys: {sorted(cond)})"
            )
        predictions = batched_eps(eps_model, x_t, t, self.condition_variants(cond, null_cond))
        return self.combine(predictions)

    @abstractmethod
    def dropped_keys(self, cond: Conditions, null_cond: Conditions | None) -> list[tuple[str, ...]]:
        """Per condition variant, in evaluation order, the conditions it replaces by their null values; exactly one
        variant is the full condition, `()`."""

    def condition_variants(self, cond: Conditions, null_cond: Conditions | None) -> list[Conditions]:
        """The condition dicts to evaluate (`dropped_keys` applied), each with the keys and batch size of cond."""
        who = type(self).__name__
        return [_drop(cond, list(keys), null_cond, who) for keys in self.dropped_keys(cond, null_cond)]

    def full_condition_rows(self, cond: Conditions, null_cond: Conditions | None) -> slice:
        """The rows of the stacked batch `[V * B, ...]` that carry the full condition (the variant dropping
        nothing): what a caller reads from the model's batched outputs (e.g. ART-V's masks) without comparing
        conditions."""
        batch = next(iter(cond.values())).shape[0]
        variant = self.dropped_keys(cond, null_cond).index(())
        return slice(variant * batch, (variant + 1) * batch)

    @abstractmethod
    def combine(self, predictions: list[Tensor]) -> Tensor:
        """Merge the predictions `[B, ...]` (in `dropped_keys` order) into one eps."""


class NoGuidance(Guidance):
    """A single conditional forward: eps = eps(x_t, t, cond); null_cond is ignored."""

    def dropped_keys(self, cond: Conditions, null_cond: Conditions | None) -> list[tuple[str, ...]]:
        return [()]

    def combine(self, predictions: list[Tensor]) -> Tensor:
        return predictions[0]

    def __repr__(self) -> str:
        return "NoGuidance()"


class ClassifierFreeGuidance(Guidance):
    """Classifier-free guidance, ldm convention: eps = u + scale * (c - u) (SCVideo appendix: scale 10).

    c is the prediction with cond; u the prediction with every key present in null_cond replaced by its
    null value (for SCVideo: `{"text": empty-prompt embedding}`), the other keys kept. Rows are ordered
    [unconditional, conditional] as in ldm. scale = 1 needs only c and runs a single forward, as ldm does.
    """

    def __init__(self, scale: float):
        self.scale = float(scale)

    def dropped_keys(self, cond: Conditions, null_cond: Conditions | None) -> list[tuple[str, ...]]:
        if not null_cond:
            raise ValueError(
                "ClassifierFreeGuidance: null_cond is empty; pass the null value of every condition to drop "
                "(e.g. {'text': empty-prompt embedding}), or use NoGuidance"
            )
        if self.scale == 1.0:
            return [()]
        return [tuple(null_cond), ()]

    def combine(self, predictions: list[Tensor]) -> Tensor:
        if len(predictions) == 1:
            return predictions[0]
        unconditional, conditional = predictions
        # eps = u + s * (c - u)
        return unconditional + self.scale * (conditional - unconditional)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale})"


class MultiConditionGuidance(Guidance):
    """ART-V supplementary eq. (1): eps = e_full + sum_k w_k * (e_full - e_drop_k).

    e_full uses every condition; e_drop_k replaces condition k by null_cond[k] and keeps the others.
    Conditions not named in weights are never dropped. A zero weight removes its term and its forward.
    ART-V: weights {"reference": 0.25, "anchor": 0.25, "text": 6.5}. With a single term of weight w this
    equals ClassifierFreeGuidance with scale w + 1.

    Args:
        weights: guidance weight w_k per condition name.
    """

    def __init__(self, weights: Mapping[str, float]):
        self.weights = {str(key): float(weight) for key, weight in weights.items()}
        self.active_weights = {key: weight for key, weight in self.weights.items() if weight != 0.0}

    def dropped_keys(self, cond: Conditions, null_cond: Conditions | None) -> list[tuple[str, ...]]:
        missing = sorted(set(self.active_weights) - set(cond))
        if missing:
            raise ValueError(
                f"MultiConditionGuidance: weights name conditions {missing} that cond lacks "
                f"(cond keys: {sorted(cond)}) <guidance.weights>"
            )
        return [(), *((key,) for key in self.active_weights)]

    def combine(self, predictions: list[Tensor]) -> Tensor:
        full, *dropped = predictions
        eps = full
        for weight, eps_drop in zip(self.active_weights.values(), dropped, strict=True):
            # + w_k * (e_full - e_drop_k)
            eps = eps + weight * (full - eps_drop)
        return eps

    def __repr__(self) -> str:
        return f"MultiConditionGuidance(weights={self.weights})"


class PreparedGuidance(Guidance):
    """`guidance` bound to one sampler run whose condition variants the model prepared once.

    The model stacks the variants of `guidance.dropped_keys(cond, null_cond)` along the batch (variant v in rows
    v*B .. (v+1)*B - 1) and precomputes what they fix (`prepared`, of the model's own type, e.g. ART-V's
    `PreparedConditions`); every call then repeats x_t and t V times and runs `eps_model(x_in, t_in, prepared)`
    without building any condition again. The `cond` and `null_cond` a sampler passes along are the run's own, from
    which `prepared` was made: only their batch size is checked (shapes, no comparison of values).

    Args:
        guidance: the guidance whose `combine` merges the predictions.
        prepared: the model's stacked, precomputed conditions of the variants.
        dropped_keys: `guidance.dropped_keys(cond, null_cond)` of the run, the variants `prepared` holds.
    """

    def __init__(self, guidance: Guidance, prepared: Any, dropped_keys: Sequence[tuple[str, ...]]) -> None:
        if isinstance(guidance, PreparedGuidance):
            raise TypeError(
                "PreparedGuidance: guidance is already prepared; bind the original guidance object"
            )
        self.guidance = guidance
        self.prepared = prepared
        self.variants = [tuple(keys) for keys in dropped_keys]

    def __call__(
        self,
        eps_model: Callable[[Tensor, Tensor, Any], Tensor],
        x_t: Tensor,
        t: Tensor,
        cond: Conditions,
        null_cond: Conditions | None = None,
    ) -> Tensor:
        """Guided eps `[B, ...]` for x_t `[B, ...]` at int64 steps t `[B]`, from one forward on `prepared`."""
        _check_inputs(x_t, t, cond)
        return self.combine(eps_of_stacked(eps_model, x_t, t, self.prepared, len(self.variants)))

    def dropped_keys(self, cond: Conditions, null_cond: Conditions | None) -> list[tuple[str, ...]]:
        return list(self.variants)

    def combine(self, predictions: list[Tensor]) -> Tensor:
        return self.guidance.combine(predictions)

    def __repr__(self) -> str:
        return f"PreparedGuidance({self.guidance!r})"
