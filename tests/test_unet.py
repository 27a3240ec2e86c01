"""Behaviour of the UNet building blocks and the tiny UNet: shapes, timestep embedding, adapter injection,
gradient checkpointing, bf16 autocast, attention backends and the block factory hooks."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

import modules.blocks.attention as attention_module
import modules.blocks.checkpointing as checkpointing_module
from modules.blocks.attention import (
    SpatialTransformer,
    attention_backend,
    get_attention_backend,
    naive_attention,
    set_attention_backend,
)
from modules.blocks.normalization import GroupNorm32, LayerNorm32
from modules.blocks.resnet import ResBlock
from modules.blocks.timestep_embedding import timestep_embedding
from modules.unet.block_factory import UNetBlockFactory
from modules.unet.unet_2d import UNetModel

TINY_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "backbone" / "tiny.yaml"
CONTEXT_DIM = 64


def tiny_unet(seed: int = 0, **overrides: Any) -> UNetModel:
    """A tiny UNet whose zero-initialised parameters are made random, so every path affects the output."""
    torch.manual_seed(seed)
    arguments: dict[str, Any] = dict(
        in_channels=4,
        out_channels=4,
        model_channels=32,
        attention_resolutions=[1, 2],
        num_res_blocks=1,
        channel_mult=[1, 2],
        num_head_channels=16,
        context_dim=CONTEXT_DIM,
        use_linear_in_transformer=True,
    )
    arguments.update(overrides)
    model = UNetModel(**arguments)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return model


def unet_inputs(
    batch: int = 2, channels: int = 4, size: int = 16, seed: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    context = torch.randn(batch, 7, CONTEXT_DIM, generator=generator)
    return x, timesteps, context


# ---------------------------------------------------------------- timestep embedding


def test_timestep_embedding_explicit_values_cos_first() -> None:
    # dim 4: half = 2, freqs = [1, exp(-ln(10000) / 2)] = [1, 0.01]; emb = [cos(t), cos(t/100), sin(t), sin(t/100)]
    embedding = timestep_embedding(torch.tensor([0, 1, 500]), 4)
    expected = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],
            [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)],
            [math.cos(500.0), math.cos(5.0), math.sin(500.0), math.sin(5.0)],
        ]
    )
    torch.testing.assert_close(embedding, expected, atol=1e-4, rtol=0)
    assert embedding.dtype == torch.float32


def test_timestep_embedding_matches_formula_for_sd_width_and_pads_odd_dim() -> None:
    dim, half, t = 320, 160, 981
    embedding = timestep_embedding(torch.tensor([t]), dim)[0]
    for k in (0, 1, 80, 159):
        frequency = math.exp(-math.log(10000.0) * k / half)
        assert embedding[k].item() == pytest.approx(math.cos(t * frequency), abs=2e-4)
        assert embedding[half + k].item() == pytest.approx(math.sin(t * frequency), abs=2e-4)
    odd = timestep_embedding(torch.tensor([3, 4]), 5)
    assert odd.shape == (2, 5)
    assert torch.equal(odd[:, 4], torch.zeros(2))


# ---------------------------------------------------------------- blocks


def test_norms_compute_in_float32_and_return_the_input_dtype() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 64, 4, 4).to(torch.bfloat16) * 100 + 1000
    norm = GroupNorm32(32, 64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)
    # A model cast to bf16 fed float32 activations: torch's own norms reject the mixed dtypes.
    norm_bf16 = copy.deepcopy(norm).to(torch.bfloat16)
    x32 = torch.randn(2, 64, 4, 4)
    expected32 = F.group_norm(x32, 32, norm_bf16.weight.float(), norm_bf16.bias.float())
    assert torch.equal(norm_bf16(x32), expected32)
    layer_norm = LayerNorm32(64).to(torch.bfloat16)
    tokens = torch.randn(2, 5, 64) + 500
    assert torch.equal(layer_norm(tokens), F.layer_norm(tokens, (64,)))


def test_fresh_blocks_start_as_identities_like_ldm() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    transformer = SpatialTransformer(32, num_heads=2, head_dim=16, context_dim=CONTEXT_DIM, use_linear=False)
    assert torch.equal(transformer(x, torch.randn(2, 3, CONTEXT_DIM)), x)
    block = ResBlock(32, 128, 32)
    assert torch.equal(block(x, torch.randn(2, 128)), x)
    fresh_unet = UNetModel(4, 4, 32, [2], 1, [1, 2], num_heads=2, context_dim=8)
    prediction = fresh_unet(x[:, :4], torch.tensor([1, 2]), torch.randn(2, 3, 8))
    assert torch.equal(prediction, torch.zeros(2, 4, 8, 8))  # `out` conv is zero-initialised


# ---------------------------------------------------------------- tiny UNet forward


def test_tiny_config_forward_shapes() -> None:
    config = OmegaConf.load(TINY_CONFIG)
    unet = instantiate(config.unet, _partial_=False)
    first_stage = instantiate(config.first_stage)
    assert unet.in_channels == unet.out_channels == first_stage.latent_channels == 12
    x, timesteps, context = unet_inputs(channels=12)
    assert unet(x, timesteps, context).shape == (2, 12, 16, 16)


def test_forward_shape_and_input_errors() -> None:
    unet = tiny_unet(out_channels=1)
    x, timesteps, context = unet_inputs()
    assert unet(x, timesteps, context).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="timesteps must have shape"):
        unet(x, timesteps[:1], context)
    with pytest.raises(ValueError, match="context is required"):
        unet(x, timesteps)
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(x[..., :15], timesteps, context)
    with pytest.raises(ValueError, match="exactly one of num_heads"):
        UNetModel(4, 4, 32, [1], 1, [1], num_heads=2, num_head_channels=16)


def test_head_layout_follows_num_heads_or_num_head_channels() -> None:
    by_heads = tiny_unet(num_heads=2, num_head_channels=-1)
    by_channels = tiny_unet(num_head_channels=16)
    layouts = [
        [(m.num_heads, m.head_dim) for m in model.modules() if isinstance(m, SpatialTransformer)]
        for model in (by_heads, by_channels)
    ]
    assert set(layouts[0]) == {(2, 16), (2, 32)}
    assert set(layouts[1]) == {(2, 16), (4, 16)}


# ---------------------------------------------------------------- T2I-Adapter features


def adapter_unet() -> UNetModel:
    """Two res blocks per level, so the injection points are the T2I-Adapter ones: blocks 2 and 5."""
    return tiny_unet(num_res_blocks=2, attention_resolutions=[2])


def adapter_features(seed: int, scale: float = 1.0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        scale * torch.randn(2, 32, 16, 16, generator=generator),
        scale * torch.randn(2, 64, 8, 8, generator=generator),
    ]


def test_adapter_features_are_added_where_the_skip_connection_stores_them() -> None:
    unet = adapter_unet()
    assert unet.adapter_block_indices == [2, 5]
    x, timesteps, context = unet_inputs()
    features = adapter_features(seed=3)
    features[0] = torch.zeros_like(features[0])

    block_outputs: dict[int, Tensor] = {}
    hooks = [
        block.register_forward_hook(lambda _m, _i, out, index=index: block_outputs.__setitem__(index, out))
        for index, block in enumerate(unet.input_blocks)
    ]
    decoder_inputs: list[Tensor] = []
    hooks.append(
        unet.output_blocks[0].register_forward_pre_hook(lambda _m, args: decoder_inputs.append(args[0]))
    )
    with torch.no_grad():
        plain = unet(x, timesteps, context)
        plain_outputs = dict(block_outputs)
        injected = unet(x, timesteps, context, adapter_features=features)
        with_zeros = unet(x, timesteps, context, adapter_features=[torch.zeros_like(f) for f in features])
    for hook in hooks:
        hook.remove()

    assert torch.equal(with_zeros, plain)
    assert not torch.allclose(injected, plain)
    # Blocks up to the last level's injection point are unchanged (level 0 got zeros) ...
    for index in range(6):
        assert torch.equal(block_outputs[index], plain_outputs[index])
    # ... and the deepest skip (first one the decoder concatenates) holds block 5's output plus the feature.
    stored_skip = decoder_inputs[1][:, 64:]
    torch.testing.assert_close(stored_skip, block_outputs[5] + features[1])


def test_adapter_feature_validation() -> None:
    unet = adapter_unet()
    x, timesteps, context = unet_inputs()
    features = adapter_features(seed=3)
    with pytest.raises(ValueError, match="one feature per level"):
        unet(x, timesteps, context, adapter_features=features[:1])
    with pytest.raises(ValueError, match=r"adapter_features\[1\] must have shape \(2, 64, 8, 8\)"):
        unet(x, timesteps, context, adapter_features=[features[0], features[1][:, :32]])


# ---------------------------------------------------------------- checkpointing, autocast, attention backends


def test_gradient_checkpointing_gives_identical_outputs_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = tiny_unet()
    checkpointed = copy.deepcopy(reference)
    checkpointed.set_gradient_checkpointing(True)
    calls = []
    real_checkpoint = checkpointing_module.checkpoint

    def counting_checkpoint(*args: Any, **kwargs: Any) -> Tensor:
        calls.append(kwargs["use_reentrant"])
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(checkpointing_module, "checkpoint", counting_checkpoint)
    x, timesteps, context = unet_inputs()
    outputs, gradients = [], []
    for model in (reference, checkpointed):
        context_leaf = context.clone().requires_grad_(True)
        out = model(x, timesteps, context_leaf)
        out.square().mean().backward()
        outputs.append(out.detach())
        gradients.append([p.grad for p in model.parameters()] + [context_leaf.grad])

    res_blocks = sum(isinstance(m, ResBlock) for m in checkpointed.modules())
    transformer_blocks = sum(
        isinstance(m, attention_module.BasicTransformerBlock) for m in checkpointed.modules()
    )
    assert len(calls) == res_blocks + transformer_blocks
    assert calls and not any(calls)
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)
    for grad_checkpointed, grad_reference in zip(gradients[1], gradients[0], strict=True):
        torch.testing.assert_close(grad_checkpointed, grad_reference, atol=1e-6, rtol=1e-5)

    checkpointed.set_gradient_checkpointing(False)
    calls.clear()
    checkpointed(x, timesteps, context).sum().backward()
    assert calls == []


def test_bf16_autocast_forward_is_close_to_float32() -> None:
    unet = tiny_unet()
    x, timesteps, context = unet_inputs()
    with torch.no_grad():
        reference = unet(x, timesteps, context)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = unet(x, timesteps, context)
    assert low_precision.dtype == torch.bfloat16
    assert torch.isfinite(low_precision).all()
    error = (low_precision.float() - reference).abs().max()
    assert error < 0.05 * reference.abs().max()
    # A model cast to bf16 as a whole (no autocast) runs too; the norms still compute in float32.
    bf16_unet = copy.deepcopy(unet).to(torch.bfloat16)
    with torch.no_grad():
        cast = bf16_unet(x.bfloat16(), timesteps, context.bfloat16())
    assert cast.dtype == torch.bfloat16
    assert (cast.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_sdpa_and_naive_attention_agree_in_the_unet() -> None:
    unet = tiny_unet()
    x, timesteps, context = unet_inputs()
    assert get_attention_backend() == "sdpa"
    with torch.no_grad():
        sdpa = unet(x, timesteps, context)
        with attention_backend("naive"):
            assert get_attention_backend() == "naive"
            naive = unet(x, timesteps, context)
    assert get_attention_backend() == "sdpa"
    torch.testing.assert_close(naive, sdpa, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("flash")


def test_naive_attention_chunks_and_keeps_softmax_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 10, 8, generator=generator) for _ in range(3))
    expected = F.scaled_dot_product_attention(query, key, value)
    monkeypatch.setattr(
        attention_module, "NAIVE_MAX_SCORE_ELEMENTS", 250
    )  # two (batch, head) slices per chunk
    torch.testing.assert_close(naive_attention(query, key, value), expected, atol=1e-6, rtol=1e-5)
    # Scores q.k / sqrt(2) = 1024 / sqrt(2) and 1025 / sqrt(2): bf16 cannot tell 1024 from 1025 (its spacing
    # there is 8) and would give weights (0.5, 0.5), i.e. output 0; float32 scores give w0 - w1 = -tanh(1 / (2 sqrt 2)).
    sharp_query = torch.tensor([1.0, 1.0]).view(1, 1, 1, 2)
    sharp_key = torch.tensor([[1024.0, 0.0], [1024.0, 1.0]]).view(1, 1, 2, 2)
    values = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]).view(1, 1, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = naive_attention(sharp_query.bfloat16(), sharp_key.bfloat16(), values.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = -math.tanh(0.5 * 2**-0.5)
    torch.testing.assert_close(out.float(), torch.full((1, 1, 1, 2), expected), atol=1e-2, rtol=0)


# ---------------------------------------------------------------- block factory and block_kwargs


class RecordingResBlock(ResBlock):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_counts: list[int] = []

    def _forward(self, x: Tensor, emb: Tensor, *, num_frames: int, **block_kwargs: Any) -> Tensor:
        self.frame_counts.append(num_frames)
        return super()._forward(x, emb, **block_kwargs)


class RecordingTransformerBlock(attention_module.BasicTransformerBlock):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_counts: list[int] = []
        self.extra_gain = nn.Parameter(torch.ones(()))

    def _forward(self, x: Tensor, context: Tensor | None = None, **block_kwargs: Any) -> Tensor:
        self.frame_counts.append(block_kwargs["num_frames"])
        return super()._forward(x, context, **block_kwargs) * self.extra_gain


class RecordingFactory(UNetBlockFactory):
    """A test factory in the shape of the SCVideo one: custom res blocks and transformer blocks."""

    def res_block(
        self, channels: int, emb_channels: int, out_channels: int, dropout: float, use_checkpoint: bool
    ) -> ResBlock:
        return RecordingResBlock(channels, emb_channels, out_channels, dropout, use_checkpoint)

    def spatial_transformer(
        self,
        channels: int,
        num_heads: int,
        head_dim: int,
        depth: int,
        context_dim: int | None,
        use_linear: bool,
        use_checkpoint: bool,
    ) -> SpatialTransformer:
        return SpatialTransformer(
            channels,
            num_heads,
            head_dim,
            depth=depth,
            context_dim=context_dim,
            use_linear=use_linear,
            use_checkpoint=use_checkpoint,
            transformer_block_class=RecordingTransformerBlock,
        )


def test_block_kwargs_reach_every_block_and_factory_keeps_sd_keys() -> None:
    plain = tiny_unet()
    recording = tiny_unet(block_factory=RecordingFactory())
    plain_keys = set(plain.state_dict())
    recording_keys = set(recording.state_dict())
    assert plain_keys <= recording_keys
    assert {key.rsplit(".", 1)[-1] for key in recording_keys - plain_keys} == {"extra_gain"}
    missing, unexpected = recording.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(key.endswith("extra_gain") for key in missing) and unexpected == []

    x, timesteps, context = unet_inputs()
    recording.set_gradient_checkpointing(True)
    out = recording(x, timesteps, context, num_frames=3)
    out.sum().backward()
    recorders = [
        m for m in recording.modules() if isinstance(m, RecordingResBlock | RecordingTransformerBlock)
    ]
    assert len(recorders) == 15  # 8 res blocks + 7 transformer blocks
    # Checkpointed blocks run their body twice (forward, then recomputation in backward).
    assert all(m.frame_counts == [3, 3] for m in recorders)
    with torch.no_grad():
        torch.testing.assert_close(
            recording(x, timesteps, context, num_frames=3), plain(x, timesteps, context)
        )
        # 2D blocks accept and ignore block_kwargs.
        assert torch.equal(plain(x, timesteps, context, num_frames=3), plain(x, timesteps, context))
