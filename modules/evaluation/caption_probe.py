"""Does a trained toy model read its caption? A diffusion-classifier probe (Li et al. 2023, "Your Diffusion Model
is Secretly a Zero-Shot Classifier"), much cheaper and less noisy than sampling and scoring videos.

For each real toy clip, the caption's colour (or direction) word is swapped for every alternative; the model's
eps-MSE on the clip is summed over fixed timesteps and shared noise draws, once per alternative caption, and the
probe counts a hit when the true word gives the lowest loss. A model that ignores the text gets equal losses
(its accuracy is then the share of clips whose true word is listed first, by the tie rule); chance is 1/7 for
colour and 1/4 for direction. A model that reads the word gets up to 100%, before it samples well: the probe
tells "the caption is ignored" (a conditioning or training problem) apart from "the sampler goes wrong".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from datamodules.toy_scorer import parse_caption
from datamodules.toy_shapes import COLORS, DIRECTIONS, toy_caption
from modules.training.video_diffusion_module import VideoDiffusionModule

PROBE_TIMESTEPS = (100, 300, 500, 700, 850, 950)


def alternative_captions(caption: str, attribute: str) -> tuple[list[str], int]:
    """Every toy caption that differs from `caption` in `attribute` ("color" or "direction") only, and the index
    of `caption` among them. `"a red circle moving left"`, "color" -> (["a red ...", "a green ...", ...], 0)."""
    color, shape, direction = parse_caption(caption)
    if attribute == "color":
        options, truth = list(COLORS), color
        captions = [toy_caption(option, shape, direction) for option in options]
    elif attribute == "direction":
        options, truth = list(DIRECTIONS), direction
        captions = [toy_caption(color, shape, option) for option in options]
    else:
        raise ValueError(f"caption probe: attribute must be 'color' or 'direction', got {attribute!r}")
    return captions, options.index(truth)


@torch.no_grad()
def caption_probe(
    model: VideoDiffusionModule,
    video: Tensor,
    captions: Sequence[str],
    *,
    timesteps: Sequence[int] = PROBE_TIMESTEPS,
    noise_draws: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Colour and direction accuracy of the diffusion-classifier probe on real toy clips.

    Args:
        model: a trained `VideoDiffusionModule` (in eval mode: ART-V then picks its seeded validation frames).
        video: real clips `[B, T, 3, H, W]` in [-1, 1].
        captions: their toy captions, `B` of them.
        timesteps: DDPM steps at which the loss is summed.
        noise_draws: noise draws per timestep (shared by all alternatives of a clip).
        seed: seed of the noise draws.

    Returns:
        {"color_accuracy": ..., "direction_accuracy": ...}, fractions of the `B` clips.
    """
    if len(captions) != video.shape[0]:
        raise ValueError(f"caption probe: {video.shape[0]} clips but {len(captions)} captions")
    generator = torch.Generator().manual_seed(seed)
    example = model.net.training_example(model.encode_video(video))
    hits = {"color": 0, "direction": 0}
    for index, caption in enumerate(captions):
        x0 = example.x0[index : index + 1]
        for attribute in hits:
            alternatives, truth = alternative_captions(caption, attribute)
            count = len(alternatives)
            cond = {
                "text": model.encode_text(alternatives),
                **{
                    key: value[index : index + 1].expand(count, *value.shape[1:])
                    for key, value in example.cond.items()
                },
            }
            losses = torch.zeros(count)
            for step in timesteps:
                t = torch.full((count,), int(step), device=x0.device)
                for _ in range(noise_draws):
                    noise = torch.randn(x0.shape, generator=generator).to(x0).expand(count, *x0.shape[1:])
                    x_t = model.schedule.q_sample(x0.expand_as(noise), t, noise)
                    eps = model.net(x_t, t, cond)
                    losses += (eps.float() - noise.float()).pow(2).flatten(1).mean(1).cpu()
            hits[attribute] += int(losses.argmin().item() == truth)
    return {f"{attribute}_accuracy": count / len(captions) for attribute, count in hits.items()}
