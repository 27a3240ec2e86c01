"""POS hybrid-semantics denoising: the original prompt's embedding for the first steps, the rewritten one after,
for every network evaluation of every sampler, with the null text untouched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from modules.diffusion.guidance import ClassifierFreeGuidance
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers import DDIMSampler, DPMPP2SAncestralSampler
from modules.pos.hybrid_semantics import HybridSchedule, HybridTextConditioning, pair_text
from modules.pos.text_cache import TextEmbeddingCache
from tests.helpers.toy_pool import tiny_text_encoder

TOKENS, WIDTH = 3, 4
ORIGINAL, REWRITTEN, NULL = 1.0, 2.0, 0.0


def embeddings(batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """(original, rewritten, null) text embeddings filled with the constants above."""
    shape = (batch, TOKENS, WIDTH)
    return torch.full(shape, ORIGINAL), torch.full(shape, REWRITTEN), torch.full((1, TOKENS, WIDTH), NULL)


class TextRecorder:
    """An eps model that records, per call, the DDPM step and the text value of every row."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[float]]] = []

    def __call__(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        text = cond["text"]
        assert text.ndim == 3, "the network must see one text per row, not the pair"
        assert bool((text == text[:, :1, :1]).all()), "each row's text is one value"
        self.calls.append((int(t[0]), text[:, 0, 0].tolist()))
        return 0.1 * x_t


def run(sampler, schedule: HybridSchedule, recorder: TextRecorder) -> None:
    original, rewritten, null = embeddings()
    hybrid = HybridTextConditioning(sampler.timesteps(), schedule)
    sampler.sample(
        hybrid.wrap(recorder),
        torch.randn(2, 1, 2, 2),
        cond={"text": pair_text(original, rewritten)},
        null_cond={"text": pair_text(null, null)},
        guidance=ClassifierFreeGuidance(5.0),
        generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize("fraction, original_steps", [(0.3, 3), (0.5, 5), (0.0, 0), (1.0, 10)])
def test_ddim_hard_switch_uses_the_original_for_the_first_steps_and_the_rewrite_after(
    fraction, original_steps
):
    sampler = DDIMSampler(NoiseSchedule(), num_steps=10, progress=False)
    recorder = TextRecorder()
    run(sampler, HybridSchedule(start=fraction, end=fraction), recorder)
    assert [t for t, _ in recorder.calls] == sampler.timesteps().tolist()
    for step, (_, rows) in enumerate(recorder.calls):
        expected = ORIGINAL if step < original_steps else REWRITTEN
        # CFG rows: [unconditional, conditional]
        assert rows == [NULL, NULL, expected, expected], f"step {step}"


def test_dpmpp_evaluations_switch_at_the_noise_level_of_the_switch_step():
    sampler = DPMPP2SAncestralSampler(NoiseSchedule(), num_steps=6, progress=False)
    recorder = TextRecorder()
    run(sampler, HybridSchedule(start=0.5, end=0.5), recorder)
    timesteps = sampler.timesteps().tolist()
    # DPM++ 2S: two evaluations per step (the step's sigma, then a midpoint towards sigma_down), one Euler
    # evaluation at the last step; the ancestral midpoint can reach the next step's timestep
    assert len(recorder.calls) == 2 * 6 - 1
    switch_timestep = timesteps[3]  # ceil(0.5 * 6) = 3 steps on the original prompt
    for index, (t, rows) in enumerate(recorder.calls):
        expected = ORIGINAL if t > switch_timestep else REWRITTEN
        assert rows[2:] == [expected, expected] and rows[:2] == [NULL, NULL], f"evaluation {index} (t={t})"
    first_evaluations = [rows[2] for _, rows in recorder.calls[::2]]
    assert first_evaluations == [ORIGINAL] * 3 + [REWRITTEN] * 3


def test_linear_blend_weights_the_rewrite_by_progress():
    sampler = DDIMSampler(NoiseSchedule(), num_steps=8, progress=False)
    recorder = TextRecorder()
    run(sampler, HybridSchedule(start=0.25, end=0.75), recorder)
    for step, (_, rows) in enumerate(recorder.calls):
        weight = min(max((step / 8 - 0.25) / 0.5, 0.0), 1.0)
        expected = ORIGINAL + weight * (REWRITTEN - ORIGINAL)
        assert rows[2:] == pytest.approx([expected, expected]) and rows[:2] == [NULL, NULL]
    assert HybridSchedule(0.25, 0.75).rewritten_weight(3, 8) == pytest.approx(0.25)


def test_the_hook_form_feeds_a_denoiser_one_text_and_is_removed_afterwards():
    seen: list[tuple[int, ...]] = []

    class Denoiser(nn.Module):
        def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
            seen.append(tuple(cond["text"].shape))
            return x_t

    denoiser = Denoiser()
    original, rewritten, _ = embeddings()
    pair = pair_text(original, rewritten)
    hybrid = HybridTextConditioning(torch.tensor([900, 500, 100]), HybridSchedule(0.5, 0.5))
    t = torch.tensor([900, 100])
    with hybrid.attached(denoiser):
        denoiser(torch.zeros(2, 1), t, {"text": pair})
        denoiser(torch.zeros(2, 1), t=t, cond={"text": pair})
        with pytest.raises(ValueError, match="pair"):
            denoiser(torch.zeros(2, 1), t, {"text": original})
    assert seen == [(2, TOKENS, WIDTH)] * 2
    denoiser(torch.zeros(2, 1), t, {"text": pair})
    assert seen[-1] == (2, 2, TOKENS, WIDTH)  # no hook any more
    # rows at different timesteps pick their own step's text
    selected = hybrid.select(pair, t)
    assert selected[0, 0, 0] == ORIGINAL and selected[1, 0, 0] == REWRITTEN


def test_schedule_and_timesteps_are_validated():
    with pytest.raises(ValueError, match="start <= end"):
        HybridSchedule(start=0.6, end=0.4)
    with pytest.raises(ValueError, match="descending"):
        HybridTextConditioning(torch.tensor([1, 21, 41]), HybridSchedule())
    assert math.isclose(HybridSchedule(0.0, 1.0).rewritten_weight(5, 10), 0.5)


def test_each_prompt_is_encoded_once_and_as_the_model_encodes_it():
    from modules.pos.caption_embedding import CaptionEmbedder

    encoder = tiny_text_encoder()
    cache = TextEmbeddingCache(CaptionEmbedder(encoder), "cpu")
    first = cache.encode(["a red circle moving left", "a blue square moving up", "a red circle moving left"])
    cache.encode(["a blue square moving up"])
    assert cache.encoder_calls == 2
    assert torch.equal(first.context[0], first.context[2])
    with torch.no_grad():
        assert torch.equal(first.context[1:2], encoder(["a blue square moving up"]))
