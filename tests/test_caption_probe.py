"""The diffusion-classifier caption probe (modules/evaluation/caption_probe.py) against oracle denoisers."""

import pytest
import torch
from einops import rearrange
from torch import Tensor, nn

from datamodules.toy_scorer import parse_caption
from datamodules.toy_shapes import COLORS, DIRECTIONS, toy_caption
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.evaluation.caption_probe import alternative_captions, caption_probe
from modules.video_denoiser import TrainingExample

COLOR_NAMES = list(COLORS)


def colour_frames(color: str) -> Tensor:
    """A 2-frame 4x4 clip filled with `color`, `[T, 3, H, W]` in [-1, 1]."""
    rgb = torch.tensor(COLORS[color], dtype=torch.float32) / 127.5 - 1.0
    return rgb.view(1, 3, 1, 1).expand(2, 3, 4, 4).clone()


class OracleNet(nn.Module):
    """Knows the toy world is "a clip filled with the caption's colour": its eps is exact for the clip its text
    names (text = colour index), or ignores the text altogether with `read_text=False`."""

    def __init__(self, schedule: NoiseSchedule, read_text: bool = True) -> None:
        super().__init__()
        self.schedule, self.read_text = schedule, read_text

    def training_example(self, latents: Tensor) -> TrainingExample:
        return TrainingExample(x0=latents, cond={})

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        if not self.read_text:
            return torch.zeros_like(x_t)
        x0 = torch.stack(
            [rearrange(colour_frames(COLOR_NAMES[int(i)]), "t c h w -> c t h w") for i in cond["text"]]
        )
        abar = self.schedule.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()


class OracleModel(nn.Module):
    def __init__(self, read_text: bool) -> None:
        super().__init__()
        self.schedule = NoiseSchedule()
        self.net = OracleNet(self.schedule, read_text)

    def encode_video(self, video: Tensor) -> Tensor:
        return rearrange(video, "b t c h w -> b c t h w")

    def encode_text(self, captions: list[str]) -> Tensor:
        return torch.tensor([COLOR_NAMES.index(parse_caption(caption)[0]) for caption in captions])


# colours and directions in an order where the truth is rarely the first option
CAPTIONS = [
    toy_caption(color, "circle", direction)
    for color, direction in [
        ("blue", "up"),
        ("white", "left"),
        ("cyan", "down"),
        ("red", "right"),
        ("green", "up"),
    ]
]
VIDEO = torch.stack([colour_frames(parse_caption(caption)[0]) for caption in CAPTIONS])


def test_probe_finds_the_colour_a_model_reads_and_ties_break_to_the_first_option():
    result = caption_probe(OracleModel(read_text=True), VIDEO, CAPTIONS, timesteps=[200, 900], noise_draws=1)
    assert result["color_accuracy"] == 1.0
    # the oracle ignores the direction word: all four losses tie and the first option ("left") wins
    assert result["direction_accuracy"] == pytest.approx(1 / 5)


def test_probe_of_a_text_blind_model_is_the_share_of_first_options():
    result = caption_probe(OracleModel(read_text=False), VIDEO, CAPTIONS, timesteps=[500], noise_draws=1)
    assert result["color_accuracy"] == pytest.approx(1 / 5)  # only the red clip
    assert result["direction_accuracy"] == pytest.approx(1 / 5)  # only the "left" clip


def test_alternative_captions_change_one_word():
    captions, truth = alternative_captions("a cyan square moving down", "direction")
    assert captions == [toy_caption("cyan", "square", direction) for direction in DIRECTIONS]
    assert captions[truth] == "a cyan square moving down"
    captions, truth = alternative_captions("a cyan square moving down", "color")
    assert len(captions) == len(COLORS) and captions[truth] == "a cyan square moving down"
    with pytest.raises(ValueError, match="attribute"):
        alternative_captions("a cyan square moving down", "shape")


def test_probe_rejects_mismatched_captions():
    with pytest.raises(ValueError, match="captions"):
        caption_probe(OracleModel(read_text=True), VIDEO, CAPTIONS[:2])
