"""Denoising with hybrid semantics (POS, arXiv 2311.00949): the original prompt steers the early, layout-forming
steps and the rewritten (enriched) prompt the later, detail-forming ones, so the rewrite adds detail without
changing what the video shows.

The POS abstract names the idea only; the schedule below is our interpretation:

- The text condition travels as a *pair* `[B, 2, L, D]` = (original, rewritten) under the usual "text" key. The
  null text is the pair (empty prompt, empty prompt), so every guidance object drops and restores both halves
  together, exactly as it does a plain text condition.
- An eps-model wrapper (`HybridTextConditioning.wrap`, or `attached` as a forward pre-hook on a denoiser whose
  `generate` passes itself to the sampler) replaces the pair by one embedding before the network sees it:
        text(step) = original + w(step) * (rewritten - original)
  with w the weight of the rewritten prompt (`HybridSchedule`). It reads the step from the timestep `t` the
  sampler passes, so every sampler and guidance works unchanged.
- The step of a timestep is its position in the sampler's own visiting order `sampler.timesteps()` (descending):
  step(t) = the last i with timesteps[i] >= t, so the rule is a noise-level threshold: for DDIM it is exactly
  "the first fraction of the steps"; DPM++ 2S also evaluates a midpoint, which belongs to its step unless the
  ancestral split (sigma_down < sigma_next) puts it at or below the next step's timestep, where it takes the next
  step's text. A DDIM inversion on another grid uses, at each noise level, the text sampling uses there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modules.diffusion.guidance import Conditions, EpsModel

TEXT_KEY = "text"


@dataclass(frozen=True)
class HybridSchedule:
    """Weight of the rewritten prompt's embedding at each sampler step (our interpretation, see module doc).

        progress = step / num_steps                               (0 at the first step)
        w = clamp((progress - start) / (end - start), 0, 1)     w = 0: original prompt, w = 1: rewritten

    `start == end` is a hard switch: the first `ceil(start * num_steps)` steps use the original prompt, the rest
    the rewritten one. `start < end` blends linearly between the two fractions of the trajectory.

    Args:
        start: fraction of the steps before which only the original prompt conditions (`pos.hybrid.start`).
        end: fraction of the steps from which only the rewritten prompt conditions (`pos.hybrid.end`).
    """

    start: float = 0.5
    end: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"pos.hybrid: expected 0 <= start <= end <= 1, got start={self.start}, end={self.end}"
            )

    def rewritten_weight(self, step: int, num_steps: int) -> float:
        """w in [0, 1] for sampler step `step` (0-based) of `num_steps`."""
        progress = step / num_steps
        if progress < self.start:
            return 0.0
        if progress >= self.end:
            return 1.0
        return (progress - self.start) / (self.end - self.start)


def pair_text(original: Tensor, rewritten: Tensor) -> Tensor:
    """Stack text embeddings `[B, L, D]` into the hybrid condition `[B, 2, L, D]` (original first)."""
    if original.shape != rewritten.shape:
        raise ValueError(
            f"hybrid text: original {list(original.shape)} and rewritten {list(rewritten.shape)} embeddings differ"
        )
    return torch.stack([original, rewritten], dim=1)


class HybridTextConditioning:
    """Picks the text embedding for each network evaluation from the (original, rewritten) pair by timestep.

    Args:
        timesteps: the DDPM steps the sampler visits, in its order (`sampler.timesteps()`, descending), `[S]`.
        schedule: the weight of the rewritten prompt per step.
    """

    def __init__(self, timesteps: Tensor, schedule: HybridSchedule) -> None:
        timesteps = torch.as_tensor(timesteps, dtype=torch.int64).flatten().cpu()
        if timesteps.numel() == 0 or bool((timesteps[1:] >= timesteps[:-1]).any()):
            raise ValueError(
                f"hybrid text: sampler timesteps must be strictly descending, got {timesteps.tolist()}"
            )
        self.timesteps = timesteps
        self.schedule = schedule
        num_steps = len(timesteps)
        self._weights = torch.tensor(
            [schedule.rewritten_weight(step, num_steps) for step in range(num_steps)], dtype=torch.float64
        )

    def step_of(self, t: Tensor) -> Tensor:
        """Sampler step `[N]` (int64) of DDPM timesteps t `[N]`: the last i with timesteps[i] >= t (0 above the
        first timestep)."""
        at_or_above = (self.timesteps[None, :] >= t.cpu()[:, None]).sum(dim=1)
        return (at_or_above - 1).clamp(min=0)

    def rewritten_weights(self, t: Tensor) -> Tensor:
        """w `[N]` (float64) for timesteps t `[N]`."""
        return self._weights[self.step_of(t)]

    def select(self, text_pair: Tensor, t: Tensor) -> Tensor:
        """The text `[N, L, D]` for rows at timesteps t `[N]` from the pair `[N, 2, L, D]`.

        w = 0 and w = 1 return the original or the rewritten embedding exactly; in between
        original + w * (rewritten - original). A null row (both halves the empty prompt) stays the null text.
        """
        if text_pair.ndim != 4 or text_pair.shape[1] != 2:
            raise ValueError(
                "hybrid text: cond['text'] must be the (original, rewritten) pair [N, 2, L, D] while hybrid "
                f"conditioning is active, got {list(text_pair.shape)}"
            )
        if t.shape != (text_pair.shape[0],):
            raise ValueError(f"hybrid text: t must be [N] = [{text_pair.shape[0]}], got {list(t.shape)}")
        original, rewritten = text_pair.unbind(dim=1)
        weights = self.rewritten_weights(t).to(device=original.device, dtype=original.dtype).view(-1, 1, 1)
        # text = original + w (rewritten - original); exact at w = 0 and w = 1
        blended = original + weights * (rewritten - original)
        return torch.where(weights == 0, original, torch.where(weights == 1, rewritten, blended))

    def conditions(self, cond: Conditions, t: Tensor) -> Conditions:
        """A copy of cond with the text pair replaced by the selected text."""
        if TEXT_KEY not in cond:
            raise KeyError(f"hybrid text: cond has no '{TEXT_KEY}' (keys: {sorted(cond)})")
        return {**cond, TEXT_KEY: self.select(cond[TEXT_KEY], t)}

    def wrap(self, eps_model: EpsModel) -> EpsModel:
        """An eps model `(x_t, t, cond) -> eps` that takes the text pair and hands eps_model one text."""

        def hybrid_eps_model(x_t: Tensor, t: Tensor, cond: Conditions) -> Tensor:
            return eps_model(x_t, t, self.conditions(cond, t))

        return hybrid_eps_model

    @contextmanager
    def attached(self, denoiser: nn.Module) -> Iterator[None]:
        """Within the block, every `denoiser(x_t, t, cond, ...)` call receives the selected text instead of the
        pair (a forward pre-hook), for denoisers whose `generate` drives the sampler with themselves."""

        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
            if len(args) >= 3:
                return (args[0], args[1], self.conditions(args[2], args[1]), *args[3:]), kwargs
            if "cond" not in kwargs:
                raise TypeError(
                    f"hybrid text: {type(module).__name__} was called without cond; expected (x_t, t, cond)"
                )
            t = args[1] if len(args) == 2 else kwargs["t"]
            return args, {**kwargs, "cond": self.conditions(kwargs["cond"], t)}

        handle = denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
