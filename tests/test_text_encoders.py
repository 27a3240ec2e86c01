"""Tiny open_clip text encoders: shapes, layer choice, tokenization, freezing, seeding, weight loading
(open_clip and transformers layouts) and the Hydra configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from open_clip.transformer import QuickGELU, TextTransformer
from safetensors.torch import save_file

from modules.checkpoints import StateDictMismatchError
from modules.text_encoders import (
    FrozenCLIPTextEmbedder,
    FrozenOpenCLIPEmbedder,
    TextKeyConversionError,
    open_clip_to_hf,
)
from tests.conftest import CONF_DIR

TINY_TEXT_CONFIG: dict[str, Any] = {
    "embed_dim": 48,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CAPTIONS = ["a red circle moving left", "a blue square moving up"]
EOT = 49407


def tiny(cls: type[FrozenOpenCLIPEmbedder] = FrozenOpenCLIPEmbedder, **kwargs: Any) -> FrozenOpenCLIPEmbedder:
    return cls(arch=TINY_TEXT_CONFIG, **kwargs)


def test_output_shapes_and_dims() -> None:
    for cls in (FrozenOpenCLIPEmbedder, FrozenCLIPTextEmbedder):
        embedder = tiny(cls)
        context = embedder(CAPTIONS)
        assert context.shape == (2, 77, 64) == (2, embedder.max_length, embedder.output_dim)
        assert context.dtype == torch.float32
        assert torch.isfinite(context).all()


def test_tokenize_matches_open_clip_and_pads_as_each_original() -> None:
    long_caption = " ".join(["panda"] * 120)
    open_clip_embedder = tiny(FrozenOpenCLIPEmbedder)
    tokens = open_clip_embedder.tokenize([*CAPTIONS, long_caption])
    assert tokens.dtype == torch.int64 and tokens.shape == (3, 77)
    assert torch.equal(tokens, open_clip.tokenize([*CAPTIONS, long_caption]))  # SD 2.x: pad 0
    assert tokens[2, 0] == 49406 and tokens[2, -1] == EOT  # truncated: SOT + 75 BPE ids + EOT

    sd1_tokens = tiny(FrozenCLIPTextEmbedder).tokenize(CAPTIONS)  # SD 1.x: CLIPTokenizer pads with EOT
    length = int((tokens[0] == EOT).nonzero()[0]) + 1
    assert torch.equal(sd1_tokens[:, :length], tokens[:2, :length])
    assert (sd1_tokens[0, length:] == EOT).all()
    assert (tokens[0, length:] == 0).all()
    with pytest.raises(TypeError, match="list of captions"):
        open_clip_embedder.tokenize("a single string")


def test_penultimate_is_blocks_but_last_then_ln_final_and_differs_from_last() -> None:
    penultimate = tiny(layer="penultimate")
    last = tiny(layer="last")
    assert all(
        torch.equal(a, b)
        for a, b in zip(penultimate.state_dict().values(), last.state_dict().values(), strict=True)
    )
    tokens = penultimate.tokenize(CAPTIONS)

    tower = penultimate.model
    x = tower.token_embedding(tokens) + tower.positional_embedding
    x = tower.transformer.resblocks[0](x, attn_mask=tower.attn_mask)  # blocks[:-1] of 2 blocks
    by_hand = tower.ln_final(x)
    torch.testing.assert_close(penultimate.encode_tokens(tokens), by_hand, rtol=0, atol=0)
    assert not torch.allclose(penultimate.encode_tokens(tokens), last.encode_tokens(tokens), atol=1e-3)


def test_last_layer_equals_open_clip_text_transformer_tokens() -> None:
    """Independent check of "last": open_clip's own TextTransformer returns ln_final(all blocks) as tokens."""
    embedder = tiny(FrozenCLIPTextEmbedder)
    reference = TextTransformer(
        width=64, heads=2, layers=2, output_dim=48, output_tokens=True, act_layer=QuickGELU
    )
    state = {k: v for k, v in embedder.model.state_dict().items() if k != "logit_scale"}
    reference.load_state_dict(state)
    tokens = embedder.tokenize(CAPTIONS)
    _, reference_tokens = reference.eval()(tokens)
    torch.testing.assert_close(embedder.encode_tokens(tokens), reference_tokens)


def test_frozen_encoder_has_no_grads_and_stays_in_eval() -> None:
    embedder = tiny()
    assert not embedder.training
    assert all(not parameter.requires_grad for parameter in embedder.parameters())
    torch.nn.Sequential(embedder).train()
    assert not embedder.training and not embedder.model.training
    assert not embedder(CAPTIONS).requires_grad

    trainable = tiny(freeze=False)
    trainable.train()
    assert trainable.training and all(parameter.requires_grad for parameter in trainable.parameters())


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = tiny(init_seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    second = tiny(init_seed=7)
    other = tiny(init_seed=8)
    torch.testing.assert_close(first(CAPTIONS), second(CAPTIONS), rtol=0, atol=0)
    assert not torch.allclose(first(CAPTIONS), other(CAPTIONS))


def test_random_tower_embeddings_still_distinguish_captions() -> None:
    context = tiny()(["a red circle moving left", "a red circle moving right", "a green square moving up"])
    for i in range(3):
        for j in range(i + 1, 3):
            assert (context[i] - context[j]).abs().max() > 1e-2


def save_open_clip_full_file(embedder: FrozenOpenCLIPEmbedder, path: Path) -> None:
    """An open_clip CLIP file: the text tower plus visual.* tensors that the loader must drop."""
    state = dict(embedder.model.state_dict())
    state["visual.conv1.weight"] = torch.randn(8, 3, 4, 4)
    state["visual.proj"] = torch.randn(8, 48)
    save_file({key: value.contiguous() for key, value in state.items()}, path)


@pytest.mark.parametrize("cls", [FrozenOpenCLIPEmbedder, FrozenCLIPTextEmbedder])
def test_open_clip_and_converted_hf_files_give_identical_outputs(cls: type, tmp_path: Path) -> None:
    source = tiny(cls, init_seed=1)
    open_clip_file = tmp_path / "open_clip.safetensors"
    save_open_clip_full_file(source, open_clip_file)
    hf_file = tmp_path / "clip_text_model.pt"
    torch.save(open_clip_to_hf(source.model.state_dict()), hf_file)

    from_open_clip = tiny(cls, init_seed=2, weights_path=open_clip_file)
    from_hf = tiny(cls, init_seed=3, weights_path=hf_file)
    expected = source(CAPTIONS)
    torch.testing.assert_close(from_open_clip(CAPTIONS), expected, rtol=0, atol=0)
    torch.testing.assert_close(from_hf(CAPTIONS), expected, rtol=0, atol=0)
    assert not torch.allclose(tiny(cls, init_seed=2)(CAPTIONS), expected)


def test_hf_file_reports_missing_projection_and_logit_scale_as_unused(tmp_path: Path) -> None:
    source = tiny(FrozenCLIPTextEmbedder, init_seed=1)
    target = tiny(FrozenCLIPTextEmbedder, init_seed=2)
    projection_before = target.model.text_projection.clone()
    report = target.load_pretrained_state_dict(
        open_clip_to_hf(source.model.state_dict(), text_model_level=False), source="hf5.safetensors"
    )
    assert sorted(report.missing) == ["logit_scale", "text_projection"]
    assert report.unexpected == [] and len(report.loaded) == len(source.model.state_dict()) - 2
    assert torch.equal(target.model.text_projection, projection_before)


def test_whole_sd1_checkpoint_as_weights_path(tmp_path: Path) -> None:
    source = tiny(FrozenCLIPTextEmbedder, init_seed=1)
    hf_state = open_clip_to_hf(source.model.state_dict())
    checkpoint = {f"cond_stage_model.transformer.{key}": value for key, value in hf_state.items()}
    checkpoint["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    checkpoint["betas"] = torch.linspace(0, 1, 10)
    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": checkpoint, "global_step": 5}, path)
    loaded = tiny(FrozenCLIPTextEmbedder, init_seed=2, weights_path=path)
    torch.testing.assert_close(loaded(CAPTIONS), source(CAPTIONS), rtol=0, atol=0)


def test_bad_text_weights_raise_clear_errors(tmp_path: Path) -> None:
    source = tiny(init_seed=1)
    hf_state = open_clip_to_hf(source.model.state_dict())
    del hf_state["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(TextKeyConversionError, match=r"layers\.1\.self_attn lacks \['k_proj'\] bias"):
        tiny().load_pretrained_state_dict(hf_state, source="broken.ckpt")

    wider = FrozenOpenCLIPEmbedder(
        arch={**TINY_TEXT_CONFIG, "text_cfg": {**TINY_TEXT_CONFIG["text_cfg"], "width": 128}}
    )
    with pytest.raises(StateDictMismatchError, match=r"shape mismatches") as error:
        tiny().load_pretrained_state_dict(wider.model.state_dict(), source="wide.safetensors")
    assert "wide.safetensors" in str(error.value)
    assert "positional_embedding: checkpoint [77, 128] vs model [77, 64]" in str(error.value)

    with pytest.raises(ValueError, match="Unrecognised text-encoder layout"):
        tiny().load_pretrained_state_dict({"foo.weight": torch.zeros(1)}, source="foo.pt")


def test_reduced_precision_weights() -> None:
    full = tiny(init_seed=4)
    half = tiny(init_seed=4, dtype="bfloat16")
    context = half(CAPTIONS)
    assert context.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.bfloat16 for parameter in half.parameters())
    torch.testing.assert_close(context.float(), full(CAPTIONS), rtol=0.1, atol=0.1)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="layer must be one of"):
        tiny(layer="pooled")
    with pytest.raises(ValueError, match="max_length=64 must equal"):
        tiny(max_length=64)
    with pytest.raises(ValueError, match="Unknown open_clip architecture"):
        FrozenOpenCLIPEmbedder(arch="ViT-Q-99")
    with pytest.raises(ValueError, match="dtype must be one of"):
        tiny(dtype="float8")
    small_vocab = {**TINY_TEXT_CONFIG, "text_cfg": {**TINY_TEXT_CONFIG["text_cfg"], "vocab_size": 1000}}
    with pytest.raises(ValueError, match="smaller than the CLIP BPE vocabulary"):
        FrozenOpenCLIPEmbedder(arch=small_vocab)
    with pytest.raises(ValueError, match="text options"):
        FrozenOpenCLIPEmbedder(
            arch={**TINY_TEXT_CONFIG, "text_cfg": {**TINY_TEXT_CONFIG["text_cfg"], "embed_cls": True}}
        )


def test_hydra_configs_instantiate() -> None:
    embedder = instantiate(OmegaConf.load(CONF_DIR / "text_encoder" / "tiny.yaml"))
    assert isinstance(embedder, FrozenOpenCLIPEmbedder) and embedder.output_dim == 64
    assert embedder(CAPTIONS).shape == (2, 77, 64)
    torch.testing.assert_close(
        embedder(CAPTIONS), instantiate(OmegaConf.load(CONF_DIR / "text_encoder" / "tiny.yaml"))(CAPTIONS)
    )
    with torch.device("meta"):
        sd2 = instantiate(OmegaConf.load(CONF_DIR / "text_encoder" / "openclip_vit_h14.yaml"))
        sd1 = instantiate(OmegaConf.load(CONF_DIR / "text_encoder" / "clip_vit_l14.yaml"))
    assert (sd2.output_dim, sd2.layer, sd2.pad_token_id) == (1024, "penultimate", 0)
    assert (sd1.output_dim, sd1.layer, sd1.pad_token_id) == (768, "last", EOT)
    assert isinstance(sd1, FrozenCLIPTextEmbedder)
