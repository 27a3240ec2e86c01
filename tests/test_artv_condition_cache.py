"""ART-V condition caching (modules/artv/prepared_conditions.py) on the toy ART-V (`experiment=toy_artv`): cached and
uncached generation give the same video and masks (float32, within 1e-5) for text-to-video, text+image-to-video and
multi-prompt videos, part by part; the caches compute the adapters once a frame and the text and anchor keys and
values once a video; and the sampler loop never waits for the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from modules.artv.anchor_attention import AnchorSpatialTransformer
from modules.artv.artv_denoiser import ARTVDenoiser
from modules.artv.prepared_conditions import ConditionCaching
from modules.blocks.attention import Attention, SpatialTransformer
from modules.diffusion.guidance import Guidance
from modules.diffusion.samplers import DPMPP2SAncestralSampler
from modules.generation import LatentRequest
from tests.conftest import compose_config

BATCH = 2
NUM_FRAMES = 3
TEXT_TOKENS = 77
TOLERANCE = 1e-5
UNCACHED = ConditionCaching.switch(False)
CACHED = ConditionCaching.switch(True)


@dataclass
class ToyARTV:
    """The toy experiment's ART-V with every zero-initialised parameter made random (so that every path, the anchor
    blocks' and the output convs' included, changes the output), its eq. (1) guidance and a 3-step DPM++ 2S."""

    net: ARTVDenoiser
    guidance: Guidance
    latent_size: tuple[int, int]
    context_dim: int

    def sampler(self) -> DPMPP2SAncestralSampler:
        return DPMPP2SAncestralSampler(self.net.schedule, num_steps=3, progress=False)

    def text(self, seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(BATCH, TEXT_TOKENS, self.context_dim, generator=generator)

    def null_text(self) -> Tensor:
        return torch.randn(1, TEXT_TOKENS, self.context_dim, generator=torch.Generator().manual_seed(99))

    def first_frame(self) -> Tensor:
        shape = (BATCH, self.net.latent_channels, *self.latent_size)
        return torch.randn(shape, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ToyARTV:
    cfg = compose_config("train", ["experiment=toy_artv"], tmp_path_factory.mktemp("toy_artv"))
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    factor = instantiate(cfg.model.first_stage).downsample_factor
    return ToyARTV(
        net=net,
        guidance=instantiate(cfg.guidance),
        latent_size=(cfg.resolution.height // factor, cfg.resolution.width // factor),
        context_dim=cfg.backbone.unet.context_dim,
    )


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@contextmanager
def caching(net: ARTVDenoiser, setting: ConditionCaching) -> Iterator[None]:
    previous = net.condition_caching
    net.condition_caching = setting
    try:
        yield
    finally:
        net.condition_caching = previous


def generate(toy: ToyARTV, setting: ConditionCaching, mode: str, **options: Any) -> tuple[Tensor, Tensor]:
    """Latents and masks of one video: "t2v" (text-to-video), "i2v" (a given first frame) or "multi" (two prompts
    of NUM_FRAMES frames each), seeded alike whatever the caching."""
    sampler = options.pop("sampler", None) or toy.sampler()
    texts = [toy.text(seed=1), toy.text(seed=2)] if mode == "multi" else [toy.text(seed=1)]
    request = LatentRequest(
        texts=texts,
        null_text=toy.null_text(),
        num_frames=NUM_FRAMES * len(texts),
        latent_size=toy.latent_size,
        generators=torch.Generator().manual_seed(0),
        first_frame=toy.first_frame() if mode == "i2v" else None,
        progress=False,
        **options,
    )
    with caching(toy.net, setting):
        generated = toy.net.generate(sampler, toy.guidance, request)
    return generated.latents, generated.masks


# ---------------------------------------------------------------- same video


@pytest.mark.parametrize("mode", ["t2v", "i2v", "multi"])
def test_cached_generation_equals_uncached_generation(toy: ToyARTV, mode: str) -> None:
    latents, masks = generate(toy, UNCACHED, mode)
    cached_latents, cached_masks = generate(toy, CACHED, mode)
    torch.testing.assert_close(cached_latents, latents, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(cached_masks, masks, atol=TOLERANCE, rtol=0)
    # not vacuous: the masks of generated frames with a reference are neither 0 nor 1, and vary
    generated = masks[:, :, 1:]
    assert 0.0 < float(generated.min()) < float(generated.max()) < 1.0


@pytest.mark.parametrize(
    "setting",
    [
        ConditionCaching(per_frame=True, text=False, anchor=False),
        ConditionCaching(per_frame=True, text=True, anchor=False),
        ConditionCaching(per_frame=True, text=False, anchor=True),
    ],
    ids=["per_frame", "per_frame+text", "per_frame+anchor"],
)
def test_each_cached_part_gives_the_same_video(toy: ToyARTV, setting: ConditionCaching) -> None:
    latents, masks = generate(toy, UNCACHED, "t2v")
    part_latents, part_masks = generate(toy, setting, "t2v")
    torch.testing.assert_close(part_latents, latents, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(part_masks, masks, atol=TOLERANCE, rtol=0)


def test_text_and_anchor_caching_need_the_per_frame_batch() -> None:
    with pytest.raises(ValueError, match="need per_frame caching"):
        ConditionCaching(per_frame=False, text=True, anchor=False)


# ---------------------------------------------------------------- computed once


def count_calls(module: nn.Module) -> list[int]:
    """Batch sizes of every forward of `module` from now on (hooks removed by the caller's `remove_hooks`)."""
    calls: list[int] = []
    module.register_forward_pre_hook(lambda _module, args: calls.append(args[0].shape[0]), prepend=True)
    return calls


def remove_hooks(net: nn.Module) -> None:
    for module in net.modules():
        module._forward_pre_hooks.clear()


def first_layer(net: ARTVDenoiser, kind: type[SpatialTransformer]) -> Attention:
    """The first text cross-attention (`SpatialTransformer`) or anchor cross-attention (`AnchorSpatialTransformer`)
    of Φdynamic."""
    transformer = next(module for module in net.dynamic_unet.modules() if isinstance(module, kind))
    if kind is AnchorSpatialTransformer:
        return transformer.anchor_attentions()[0]
    return transformer.context_attentions()[0]


@pytest.mark.parametrize(("mode", "prompts"), [("t2v", 1), ("multi", 2)])
def test_adapters_run_once_a_frame_and_text_and_anchor_projections_once_a_video(
    toy: ToyARTV, mode: str, prompts: int
) -> None:
    net = toy.net
    counters = {
        "evaluations": count_calls(net),
        "adapter": count_calls(net.dynamic_adapter),
        "text": count_calls(first_layer(net, SpatialTransformer).to_k),
        "anchor": count_calls(first_layer(net, AnchorSpatialTransformer).to_k),
    }
    try:
        generate(toy, UNCACHED, mode)
        uncached = {name: list(calls) for name, calls in counters.items()}
        for calls in counters.values():
            calls.clear()
        generate(toy, CACHED, mode)
    finally:
        remove_hooks(net)
    frames = prompts * NUM_FRAMES
    evaluations = len(uncached["evaluations"])
    assert len(counters["evaluations"]) == evaluations > frames
    # uncached: every evaluation runs the adapter and projects text and anchor, on the whole variant batch
    assert uncached["adapter"] == uncached["text"] == uncached["anchor"] == uncached["evaluations"]
    # cached: the adapter once a frame, on the B + 1 distinct reference rows (full, null)
    assert counters["adapter"] == [BATCH + 1] * frames
    # the text keys / values once a prompt; the anchor's once an anchor (frame 0's null anchor, then one per prompt)
    assert counters["text"] == [BATCH + 1] * prompts
    assert counters["anchor"] == [BATCH + 1] * (prompts + 1)


# ---------------------------------------------------------------- no host synchronisation


def _host_sync(name: str) -> Callable[..., Any]:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name} inside the sampler loop: it waits for the device")

    return forbidden


@pytest.mark.parametrize("setting", [CACHED, UNCACHED], ids=["cached", "uncached"])
def test_sampler_loop_never_waits_for_the_device(
    toy: ToyARTV, setting: ConditionCaching, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torch.equal`, `Tensor.item` and truth tests of tensors read device values on the host; none may run inside
    a sampler run (the per-frame and per-video preparation around it may)."""
    sampler = toy.sampler()
    sample = sampler.sample
    runs: list[int] = []

    def sample_without_host_sync(*args: Any, **kwargs: Any) -> Tensor:
        with monkeypatch.context() as patch:
            patch.setattr(torch, "equal", _host_sync("torch.equal"))
            patch.setattr(torch.Tensor, "item", _host_sync("Tensor.item"))
            patch.setattr(torch.Tensor, "__bool__", _host_sync("Tensor.__bool__"))
            frame = sample(*args, **kwargs)
        runs.append(1)
        return frame

    monkeypatch.setattr(sampler, "sample", sample_without_host_sync)
    evaluations = count_calls(toy.net)
    try:
        generate(toy, setting, "multi", sampler=sampler)
    finally:
        remove_hooks(toy.net)
    assert len(runs) == 2 * NUM_FRAMES and len(evaluations) > len(runs)


# ---------------------------------------------------------------- projected contexts


def test_a_projected_context_gives_the_attention_of_the_context() -> None:
    torch.manual_seed(0)
    transformer = SpatialTransformer(32, num_heads=2, head_dim=16, depth=2, context_dim=24, use_linear=True)
    with torch.no_grad():
        transformer.proj_out.weight.normal_()
    x, context = torch.randn(3, 32, 4, 4), torch.randn(3, 7, 24)
    layers = transformer.context_attentions()
    assert layers == [block.attn2 for block in transformer.transformer_blocks]
    key_values = {layer: layer.project_context(context) for layer in layers}
    with torch.no_grad():
        plain = transformer(x, context)
        projected = transformer(x, context, context_key_values=key_values)
    torch.testing.assert_close(projected, plain, atol=1e-6, rtol=0)
    # the projected keys and values are what the layers read: other ones change the output
    other = {layer: layer.project_context(torch.randn(3, 7, 24)) for layer in layers}
    with torch.no_grad():
        assert not torch.allclose(transformer(x, context, context_key_values=other), plain, atol=1e-4)
    without_context = SpatialTransformer(32, num_heads=2, head_dim=16, context_dim=None)
    assert without_context.context_attentions() == []  # attn2 is a self-attention there
