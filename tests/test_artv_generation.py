"""ART-V generation on a tiny denoiser: eq. (1) in one batched forward, the first frame, the anchor rules, the mask
output, M = 1 reproducing the reference frame, and overfitting a 2-frame clip."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from modules.artv.artv_denoiser import ARTVDenoiser
from modules.artv.autoregressive import text_only_guidance
from modules.artv.prepared_conditions import ConditionCaching
from modules.diffusion.guidance import ClassifierFreeGuidance, Guidance, MultiConditionGuidance, NoGuidance
from modules.diffusion.samplers import DPMPP2SAncestralSampler, Sampler
from modules.generation import GeneratedLatents, LatentRequest
from tests.helpers.tiny_artv import (
    CONTEXT_DIM,
    LATENT_CHANNELS,
    LATENT_SIZE,
    TEXT_TOKENS,
    random_conditions,
    tiny_artv,
)

EQ1_WEIGHTS = {"reference": 0.25, "anchor": 0.25, "text": 6.5}  # ART-V supplementary eq. (1)


def count_forwards(net: ARTVDenoiser) -> list[int]:
    """Batch sizes of every denoiser forward from now on."""
    batch_sizes: list[int] = []
    net.register_forward_pre_hook(lambda _module, args: batch_sizes.append(args[0].shape[0]))
    return batch_sizes


def texts(batch: int = 1, seed: int = 2) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, TEXT_TOKENS, CONTEXT_DIM, generator=generator)
    null_text = torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=generator)
    return text, null_text


def generate(
    net: ARTVDenoiser,
    steps: Sampler,
    guidance: Guidance,
    texts: list[Tensor],
    null_text: Tensor,
    num_frames: int,
    **options: Any,
) -> GeneratedLatents:
    """The net's generation of 8x8 latents without progress bars; options: the rest of a `LatentRequest`."""
    request = LatentRequest(
        texts=texts, null_text=null_text, num_frames=num_frames, latent_size=(8, 8), progress=False, **options
    )
    return net.generate(steps, guidance, request)


def latents_and_masks(generated: GeneratedLatents) -> tuple[Tensor, Tensor]:
    return generated.latents, generated.masks


def sampler(num_steps: int = 3) -> DPMPP2SAncestralSampler:
    return DPMPP2SAncestralSampler(tiny_artv().schedule, num_steps=num_steps, progress=False)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ---------------------------------------------------------------- guidance


def test_batched_eq1_equals_four_separate_evaluations_combined_by_hand() -> None:
    net = tiny_artv().eval()
    cond = random_conditions(batch=2)
    _, null_text = texts()
    null_cond = net.null_condition(cond, null_text)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 800])
    batch_sizes = count_forwards(net)
    with torch.no_grad():
        guided = MultiConditionGuidance(EQ1_WEIGHTS)(net, x_t, t, cond, null_cond)
        assert batch_sizes == [8]  # the four evaluations of eq. (1) are ONE forward of 4 x B
        full = net(x_t, t, cond)
        no_reference = net(x_t, t, {**cond, "reference": torch.zeros_like(cond["reference"])})
        no_anchor = net(x_t, t, {**cond, "anchor": torch.zeros_like(cond["anchor"])})
        no_text = net(x_t, t, {**cond, "text": null_text.expand_as(cond["text"])})
    by_hand = full + 0.25 * (full - no_reference) + 0.25 * (full - no_anchor) + 6.5 * (full - no_text)
    torch.testing.assert_close(guided, by_hand, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(guided, full, atol=1e-3)


def test_first_frame_guidance_keeps_eq1_result_with_two_forwards_instead_of_four() -> None:
    net = tiny_artv().eval()
    cond = random_conditions(batch=2)
    cond["reference"] = torch.zeros_like(cond["reference"])  # frame 0 of text-to-video: y_ref = y_anc = null
    cond["anchor"] = torch.zeros_like(cond["anchor"])
    _, null_text = texts()
    null_cond = net.null_condition(cond, null_text)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    eq1 = MultiConditionGuidance(EQ1_WEIGHTS)
    batch_sizes = count_forwards(net)
    with torch.no_grad():
        full_eq1 = eq1(net, x_t, t, cond, null_cond)
        text_only = text_only_guidance(eq1)(net, x_t, t, cond, null_cond)
    assert batch_sizes == [8, 4]
    torch.testing.assert_close(text_only, full_eq1, atol=1e-4, rtol=1e-4)
    cfg = ClassifierFreeGuidance(7.5)
    assert text_only_guidance(cfg) is cfg


# ---------------------------------------------------------------- generation


def record_full_conditions(net: ARTVDenoiser) -> list[dict[str, Tensor]]:
    """The conditions of every forward (use with NoGuidance: each forward then carries only the full condition).

    Turns condition caching off, so that every forward receives the condition dict itself rather than conditions
    prepared from it; tests/test_artv_condition_cache.py shows that caching changes no video."""
    net.condition_caching = ConditionCaching.switch(False)
    calls: list[dict[str, Tensor]] = []
    net.register_forward_pre_hook(
        lambda _module, args: calls.append({k: v.clone() for k, v in args[2].items()})
    )
    return calls


def test_text_to_video_generates_frame_zero_without_image_conditions_then_anchors_on_it() -> None:
    net = tiny_artv().eval()
    text, null_text = texts(batch=2)
    calls = record_full_conditions(net)
    steps = sampler(num_steps=2)
    evaluations_per_frame = 3  # DPM++ 2S ancestral: two per step, one on the last (Euler) step
    latents, masks = latents_and_masks(generate(net, steps, NoGuidance(), [text], null_text, num_frames=3))
    assert latents.shape == (2, LATENT_CHANNELS, 3, LATENT_SIZE, LATENT_SIZE)
    assert masks.shape == (2, 1, 3, LATENT_SIZE, LATENT_SIZE)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert len(calls) == 3 * evaluations_per_frame
    frame0_calls, frame1_calls, frame2_calls = (
        calls[i * evaluations_per_frame : (i + 1) * evaluations_per_frame] for i in range(3)
    )
    for call in frame0_calls:
        assert not call["reference"].any() and not call["anchor"].any()
    frames = [latents[:, :, index] for index in range(3)]
    for call in frame1_calls:
        assert torch.equal(call["anchor"], frames[0])
        assert torch.equal(call["reference"][:, 8:], frames[0])  # clean previous frame
        assert float((call["reference"][:, :4] - frames[0]).abs().max()) < 0.2  # frame -1 clamped to frame 0
    for call in frame2_calls:
        assert torch.equal(call["anchor"], frames[0])
        assert torch.equal(call["reference"][:, 8:], frames[1])
        noise = call["reference"][:, :8] - torch.cat([frames[0], frames[1]], dim=1)
        assert float(noise.std()) == pytest.approx(net.reference_noise_level_inference, rel=0.3)


def test_image_to_video_keeps_the_given_first_frame_and_is_reproducible() -> None:
    net = tiny_artv().eval()
    text, null_text = texts(batch=2)
    first_frame = torch.randn(2, 4, 8, 8)

    def run(seed: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        guidance = MultiConditionGuidance(EQ1_WEIGHTS)
        return latents_and_masks(
            generate(
                net, sampler(), guidance, [text], null_text, 3, generators=generator, first_frame=first_frame
            )
        )

    latents, masks = run(seed=0)
    assert torch.equal(latents[:, :, 0], first_frame)
    assert torch.equal(masks[:, :, 0], torch.ones(2, 1, 8, 8))
    again, _ = run(seed=0)
    other, _ = run(seed=1)
    assert torch.equal(latents, again)
    assert not torch.allclose(latents[:, :, 1:], other[:, :, 1:])
    with pytest.raises(ValueError, match="first_frame must be a clean latent"):
        generate(net, sampler(), NoGuidance(), [text], null_text, 2, first_frame=first_frame[:1])


def test_initial_noise_replaces_the_draws_of_the_frames_it_covers() -> None:
    net = tiny_artv().eval()
    text, null_text = texts(batch=2)
    deterministic = DPMPP2SAncestralSampler(net.schedule, num_steps=3, eta=0.0, progress=False)
    initial_noise = torch.randn(2, 4, 1, 8, 8)

    def run(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        guidance = MultiConditionGuidance(EQ1_WEIGHTS)
        return generate(
            net,
            deterministic,
            guidance,
            [text],
            null_text,
            3,
            generators=generator,
            initial_noise=initial_noise,
        ).latents

    first, second = run(seed=0), run(seed=1)
    assert torch.equal(first[:, :, 0], second[:, :, 0])  # frame 0 starts from the given noise
    assert not torch.allclose(first[:, :, 1], second[:, :, 1])  # later frames draw their own
    with pytest.raises(ValueError, match="initial_noise must be per frame"):
        generate(
            net, deterministic, NoGuidance(), [text], null_text, 2, initial_noise=torch.randn(2, 4, 1, 4, 4)
        )


def test_multi_prompt_anchors_are_first_frame_then_last_frame_of_previous_prompt() -> None:
    net = tiny_artv().eval()
    prompt_a, null_text = texts(seed=3)
    prompt_b, _ = texts(seed=4)
    calls = record_full_conditions(net)
    latents = generate(net, sampler(num_steps=1), NoGuidance(), [prompt_a, prompt_b], null_text, 6).latents
    assert latents.shape == (1, 4, 6, 8, 8)
    frames = [latents[:, :, index] for index in range(6)]
    # one evaluation per frame (a single Euler step); frame 0 has null anchor, then frames 1..5
    assert len(calls) == 6 and not calls[0]["anchor"].any()
    for frame_index, call in enumerate(calls[1:], start=1):
        expected_anchor, expected_text = (frames[0], prompt_a) if frame_index < 3 else (frames[2], prompt_b)
        assert torch.equal(call["anchor"], expected_anchor), frame_index
        assert torch.equal(call["text"], expected_text), frame_index
        # the references run on across the prompt boundary
        assert torch.equal(call["reference"][:, 8:], frames[frame_index - 1]), frame_index


def test_mask_of_one_reproduces_the_reference_frame_exactly() -> None:
    net = tiny_artv().eval()
    with torch.no_grad():
        net.mask_unet.out[-1].weight.zero_()
        net.mask_unet.out[-1].bias.fill_(100.0)  # M = 1: x0_hat = z_ref at every step
    text, null_text = texts()
    first_frame = torch.randn(1, 4, 8, 8)
    latents = generate(
        net, sampler(num_steps=4), NoGuidance(), [text], null_text, 3, first_frame=first_frame
    ).latents
    # DPM++ 2S ancestral: D(x, sigma) = z_ref exactly, and the last (Euler) step lands on D
    torch.testing.assert_close(latents[:, :, 1], first_frame, atol=1e-5, rtol=0)
    torch.testing.assert_close(latents[:, :, 2], first_frame, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- learning


def overfit_two_frame_clip(steps: int) -> tuple[ARTVDenoiser, list[float], Tensor, Tensor, Tensor]:
    """Train a one-level tiny ART-V on one 2-frame clip whose frame 1 differs from frame 0 in a 3x3 patch."""
    net = tiny_artv(
        randomize_zero_init=False,
        mask_init_logit=0.0,
        unet_arguments={"attention_resolutions": [1], "channel_mult": [1]},
    )
    generator = torch.Generator().manual_seed(1)
    frame0 = torch.randn(1, 4, 8, 8, generator=generator)
    frame1 = frame0.clone()
    frame1[..., 2:5, 2:5] = torch.randn(1, 4, 3, 3, generator=generator)
    batch = 8
    clip = torch.stack([frame0, frame1], dim=2).expand(batch, -1, -1, -1, -1)
    text = torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=generator).expand(batch, -1, -1)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    net.train()
    for _ in range(steps):
        example = net.training_example(clip)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        noise = torch.randn(example.x0.shape, generator=generator)
        x_t = net.schedule.q_sample(example.x0, t, noise)
        loss = F.mse_loss(net(x_t, t, {"text": text, **example.cond}), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    net.eval()
    return net, losses, frame0, frame1, text[:1]


def generated_second_frame(net: ARTVDenoiser, frame0: Tensor, text: Tensor) -> Tensor:
    generator = torch.Generator().manual_seed(3)
    generated = generate(
        net,
        sampler(num_steps=20),
        NoGuidance(),
        [text],
        torch.zeros_like(text),
        2,
        generators=generator,
        first_frame=frame0,
    )
    return generated.latents[:, :, 1]


def test_overfits_a_two_frame_clip() -> None:
    net, losses, frame0, frame1, text = overfit_two_frame_clip(steps=100)
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:5]) / 5
    error = F.mse_loss(generated_second_frame(net, frame0, text), frame1).item()
    copy_error = F.mse_loss(frame0, frame1).item()
    assert error < 0.25 * copy_error, (error, copy_error)


@pytest.mark.slow
def test_overfits_a_two_frame_clip_and_learns_to_copy_the_static_part() -> None:
    net, losses, frame0, frame1, text = overfit_two_frame_clip(steps=400)
    assert sum(losses[-20:]) / 20 < 0.03 * sum(losses[:5]) / 5
    error = F.mse_loss(generated_second_frame(net, frame0, text), frame1).item()
    assert error < 0.05 * F.mse_loss(frame0, frame1).item()
    cond = {"text": text, "reference": torch.cat([frame0, frame0, frame0], dim=1), "anchor": frame0}
    t = torch.tensor([200])
    with torch.no_grad():
        _, mask = net(net.schedule.q_sample(frame1, t, torch.randn_like(frame1)), t, cond, return_mask=True)
    moving = torch.zeros(8, 8, dtype=torch.bool)
    moving[2:5, 2:5] = True
    assert float(mask[0, 0][~moving].mean()) > float(mask[0, 0][moving].mean()) + 0.2
