"""Why does a toy video model follow (or ignore) the caption's motion? Measurements on a trained checkpoint.

Three questions, each answered by one function (`scripts/diagnose_motion.py` runs them all and writes a report):

- `probe_by_timestep`: at which noise levels does the eps loss prefer the true direction (colour) word? The
  diffusion-classifier probe of `caption_probe.py`, split by timestep, with the mean relative loss gap between the
  wrong words and the true one. A word the model uses only at low noise cannot steer sampling: by then the
  noisy frames already show where the shape goes.
- `temporal_layer_report`: have the video layers moved from their identity start (temporal conv `||W - I|| / ||I||`,
  temporal attention output projection `||W_out||` against the spatial self-attention's), how large is each
  temporal branch's contribution on real clips (`||branch|| / ||input||`), and does it change with the direction
  word (`||branch(caption) - branch(other direction)|| / ||branch||`)?
- `direction_commitment`: when during sampling is the motion decided? Sampling starts with one caption and
  switches to the opposite direction after `k` of the sampler's steps; the share of videos that end moving the
  first caption's way tells how many steps fix the direction, and whether the caption fixes it at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from datamodules.toy_scorer import parse_caption, score_video
from datamodules.toy_shapes import toy_caption
from modules.evaluation.caption_probe import alternative_captions
from modules.training.video_diffusion_module import VideoDiffusionModule

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
TEMPORAL_BRANCHES = ("temporal_conv", "attn_temp1", "attn_temp2")


@dataclass(frozen=True)
class ProbeRow:
    """The probe at one timestep: accuracy of the true word (chance 1/options) and the mean over clips of
    (mean loss of the wrong words - loss of the true word) / loss of the true word."""

    timestep: int
    accuracy: float
    relative_gap: float


@torch.no_grad()
def probe_by_timestep(
    model: VideoDiffusionModule,
    video: Tensor,
    captions: Sequence[str],
    attribute: str,
    timesteps: Sequence[int],
    *,
    noise_draws: int = 2,
    seed: int = 0,
    first_frame_step: int | None = None,
) -> list[ProbeRow]:
    """The caption probe for `attribute` ("color" or "direction") at each timestep separately.

    video: real clips `[N, T, 3, H, W]` in [-1, 1] with their toy `captions`. first_frame_step: None (every frame at
    the probe's step), or the DDPM step of the first frame, the loss then summed over the other frames only: a legible
    first frame fixes where the shape starts and only the caption says where the later frames have it (a net that
    takes one step per frame, `per_frame_steps`).
    """
    generator = torch.Generator().manual_seed(seed)
    example = model.net.training_example(model.encode_video(video))
    hits = dict.fromkeys(timesteps, 0)
    gaps = dict.fromkeys(timesteps, 0.0)
    for index, caption in enumerate(captions):
        alternatives, truth = alternative_captions(caption, attribute)
        count = len(alternatives)
        x0 = example.x0[index : index + 1]
        cond = {
            "text": model.encode_text(alternatives),
            **{
                key: value[index : index + 1].expand(count, *value.shape[1:])
                for key, value in example.cond.items()
            },
        }
        for step in timesteps:
            t = torch.full((count,), int(step), device=x0.device)
            scored = slice(None)  # the frames whose loss counts
            if first_frame_step is not None:
                t = t[:, None].repeat(1, x0.shape[2])
                t[:, 0] = first_frame_step
                scored = slice(1, None)
            losses = torch.zeros(count)
            for _ in range(noise_draws):
                noise = torch.randn(x0.shape, generator=generator).to(x0).expand(count, *x0.shape[1:])
                eps = model.net(model.schedule.q_sample(x0.expand_as(noise), t, noise), t, cond)
                losses += (eps.float() - noise.float())[:, :, scored].pow(2).flatten(1).mean(1).cpu()
            hits[step] += int(losses.argmin().item() == truth)
            wrong = torch.cat([losses[:truth], losses[truth + 1 :]]).mean()
            gaps[step] += float((wrong - losses[truth]) / losses[truth])
    return [ProbeRow(int(step), hits[step] / len(captions), gaps[step] / len(captions)) for step in timesteps]


def _branches(net: nn.Module) -> dict[str, nn.Module]:
    """Every temporal branch module of an SCVideo UNet, by its state-dict prefix."""
    return {
        name: module for name, module in net.named_modules() if name.rsplit(".", 1)[-1] in TEMPORAL_BRANCHES
    }


@torch.no_grad()
def layer_movement(net: nn.Module) -> dict[str, float]:
    """How far each temporal layer is from its identity start: temporal conv `||W - Dirac|| / ||Dirac||`; temporal
    attention `||W_out|| / ||W_out of the block's spatial self-attention||` (0 at initialisation)."""
    movement: dict[str, float] = {}
    for name, module in _branches(net).items():
        if isinstance(module, nn.Conv3d):
            identity = torch.zeros_like(module.weight)
            nn.init.dirac_(identity)
            movement[name] = float((module.weight - identity).norm() / identity.norm())
        else:
            block = net.get_submodule(name.rsplit(".", 1)[0])
            spatial = block.attn1.to_out[0].weight
            movement[name] = float(module.to_out[0].weight.norm() / spatial.norm())
    return movement


@contextmanager
def _recorded_branches(net: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record each temporal branch's residual contribution during a forward: conv output - input, attention output."""
    records: dict[str, Tensor] = {}

    def hook(name: str, is_conv: bool):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            records[name] = (output - inputs[0] if is_conv else output).detach().float()
            records[name + ":input"] = inputs[0].detach().float()

        return record

    handles = [
        module.register_forward_hook(hook(name, isinstance(module, nn.Conv3d)))
        for name, module in _branches(net).items()
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def temporal_layer_report(
    model: VideoDiffusionModule, video: Tensor, captions: Sequence[str], timestep: int, *, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per temporal branch at DDPM step `timestep` on real clips `[N, T, 3, H, W]`: `movement` (`layer_movement`),
    `contribution` = ||branch output|| / ||branch input|| and `direction_sensitivity` = ||branch(caption) -
    branch(caption with the opposite direction)|| / ||branch(caption)||, same noisy input."""
    x0 = model.net.training_example(model.encode_video(video)).x0
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.full((x0.shape[0],), int(timestep), device=x0.device)
    x_t = model.schedule.q_sample(x0, t, noise)
    flipped = []
    for caption in captions:
        color, shape, direction = parse_caption(caption)
        flipped.append(toy_caption(color, shape, OPPOSITE[direction]))
    outputs = []
    for texts in (list(captions), flipped):
        with _recorded_branches(model.net) as records:
            model.net(x_t, t, {"text": model.encode_text(texts)})
        outputs.append(dict(records))
    movement = layer_movement(model.net)
    report: dict[str, dict[str, float]] = {}
    for name in movement:
        true, other = outputs[0][name], outputs[1][name]
        report[name] = {
            "movement": movement[name],
            "contribution": float(true.norm() / outputs[0][name + ":input"].norm().clamp_min(1e-12)),
            "direction_sensitivity": float((true - other).norm() / true.norm().clamp_min(1e-12)),
        }
    return report


@torch.no_grad()
def direction_commitment(
    model: VideoDiffusionModule,
    captions: Sequence[str],
    switch_steps: Sequence[int],
    *,
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
) -> list[dict[str, float]]:
    """DDIM (eta 0, the model's sampler's steps and guidance) from seeded noise: the caption's text for the first
    `k` steps, then the same caption with the opposite direction. For each k in `switch_steps`: the share of videos
    moving the first caption's way (`first`), the opposite way (`second`), and their median displacement.
    k = 0 is the opposite caption throughout; k = the number of steps is the caption throughout."""
    sampler = model.sampler
    timesteps = [int(step) for step in sampler.timesteps()]
    alphas = model.schedule.alphas_cumprod_f64
    factor = model.first_stage.downsample_factor
    first, second = [], []
    for caption in captions:
        direction = parse_caption(caption)[2]
        first.append(direction)
        second.append(OPPOSITE[direction])
    texts = model.encode_text(list(captions))
    flipped = model.encode_text(
        [toy_caption(*parse_caption(c)[:2], OPPOSITE[parse_caption(c)[2]]) for c in captions]
    )
    null = model.null_text()
    generator = torch.Generator().manual_seed(seed)
    shape = (len(captions), model.net.unet.in_channels, num_frames, height // factor, width // factor)
    noise = torch.randn(shape, generator=generator).to(model.device)
    rows = []
    for k in switch_steps:
        x = noise
        for i, step in enumerate(timesteps):
            text = texts if i < k else flipped
            t = torch.full((x.shape[0],), step, dtype=torch.int64, device=x.device)
            eps = model.guidance(model.net, x, t, {"text": text}, {"text": null})
            a_t = float(alphas[step])
            a_prev = float(alphas[timesteps[i + 1]]) if i + 1 < len(timesteps) else float(alphas[0])
            x0 = sampler.clip_x0((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t))
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        videos = model.decode_video(x)
        scores = [score_video(video.cpu()) for video in videos]
        displacement = sorted(math.hypot(*score.displacement) for score in scores)
        rows.append(
            {
                "switch_after": int(k),
                "first": sum(s.direction == d for s, d in zip(scores, first, strict=True)) / len(scores),
                "second": sum(s.direction == d for s, d in zip(scores, second, strict=True)) / len(scores),
                "median_displacement": displacement[len(displacement) // 2],
            }
        )
    return rows


def noisy_clip_readability(
    schedule_alphas_cumprod: Tensor,
    timesteps: Sequence[int],
    *,
    scale: float,
    shift: float,
    size: int = 32,
    num_frames: int = 8,
    start: str = "direction_free",
    travel_fraction: tuple[float, float] = (0.26, 0.30),
    num_clips: int = 120,
    seed: int = 0,
) -> list[dict[str, float]]:
    """How much of the caption the noisy clip itself gives away, model-free: an ideal observer who knows a toy clip's
    shape, size and path but not its direction (colour) picks, from x_t at each timestep, the alternative clip
    closest to x_t / sqrt(a_t) (the Gaussian likelihood). Where it is right, the eps loss gains nothing from the
    caption's word, so a model need not learn to read it. Latents as the pixel-space first stage's: (pixels - shift)
    * scale. Returns per timestep the observer's direction and colour accuracy (chance 1/4, 1/7)."""
    import dataclasses

    import numpy as np

    from datamodules.toy_shapes import COLORS, DIRECTIONS, render_toy_video, toy_video_spec

    rng = np.random.default_rng(seed)
    clips = []
    for index in range(num_clips):
        spec = toy_video_spec(index, np.random.default_rng([seed, index]), size, start, travel_fraction)
        variants = {}
        for attribute, names in (("direction", list(DIRECTIONS)), ("color", list(COLORS))):
            videos = [
                render_toy_video(dataclasses.replace(spec, **{attribute: name}), size, num_frames)
                for name in names
            ]
            latents = [(video.astype(np.float64) / 127.5 - 1.0 - shift) * scale for video in videos]
            variants[attribute] = (latents, names.index(getattr(spec, attribute)))
        clips.append(variants)
    rows = []
    for step in timesteps:
        alpha = float(schedule_alphas_cumprod[int(step)])
        hits = {"direction": 0, "color": 0}
        for variants in clips:
            for attribute, (latents, truth) in variants.items():
                noisy = math.sqrt(alpha) * latents[truth] + math.sqrt(1 - alpha) * rng.standard_normal(
                    latents[truth].shape
                )
                distances = [((noisy - math.sqrt(alpha) * latent) ** 2).sum() for latent in latents]
                hits[attribute] += int(np.argmin(distances) == truth)
        rows.append(
            {"timestep": int(step), **{f"{key}_accuracy": value / num_clips for key, value in hits.items()}}
        )
    return rows
