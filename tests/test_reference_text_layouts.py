"""Full-size text towers (meta device) against the original checkpoints' key -> shape listings, and the
transformers <-> open_clip key conversion on a tiny random tower."""

from __future__ import annotations

import json

import torch

from modules.text_encoders import OpenCLIPTextTower, hf_to_open_clip, open_clip_to_hf
from modules.text_encoders.open_clip_embedder import FrozenCLIPTextEmbedder, FrozenOpenCLIPEmbedder
from tests.conftest import FIXTURES

REFERENCE = FIXTURES / "reference"
OPEN_CLIP_PREFIX = "cond_stage_model.model."
HF_PREFIX = "cond_stage_model.transformer."
TINY_TEXT_CONFIG = {
    "embed_dim": 32,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def reference_layout(name: str, prefix: str) -> dict[str, list[int]]:
    listing = json.loads((REFERENCE / name).read_text())
    assert all(key.startswith(prefix) for key in listing)
    return {key[len(prefix) :]: shape for key, shape in listing.items()}


def shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {key: list(tensor.shape) for key, tensor in state_dict.items()}


def test_vit_h14_text_tower_matches_sd2_cond_stage_model() -> None:
    """SD 2.x keeps the whole ViT-H-14 text tower (24 blocks, logit_scale, text_projection; no attn_mask)."""
    expected = reference_layout("openclip_vit_h14_text.json", OPEN_CLIP_PREFIX)
    with torch.device("meta"):
        embedder = FrozenOpenCLIPEmbedder(arch="ViT-H-14", layer="penultimate")
    state_dict = embedder.model.state_dict()
    assert shapes(state_dict) == expected
    assert len(state_dict) == 294
    assert sum(tensor.numel() for tensor in state_dict.values()) == 354_032_641
    assert "attn_mask" not in state_dict
    assert embedder.output_dim == 1024


def test_vit_l14_text_model_in_hf_names_matches_sd1_cond_stage_model() -> None:
    """SD 1.x stores CLIPTextModel: 123,060,480 parameters plus the 77-element position_ids buffer."""
    expected = reference_layout("sd1_clip_text.json", HF_PREFIX)
    with torch.device("meta"):
        embedder = FrozenCLIPTextEmbedder()
    hf_state_dict = open_clip_to_hf(embedder.model.state_dict())
    assert shapes(hf_state_dict) == expected
    position_ids = hf_state_dict["text_model.embeddings.position_ids"]
    assert position_ids.dtype == torch.int64 and position_ids.numel() == 77
    parameters = sum(t.numel() for k, t in hf_state_dict.items() if not k.endswith("position_ids"))
    assert parameters == 123_060_480
    assert embedder.output_dim == 768
    assert type(embedder.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_conversion_is_exact_both_ways_on_a_tiny_random_tower() -> None:
    torch.manual_seed(3)
    tower = OpenCLIPTextTower.from_config(TINY_TEXT_CONFIG, quick_gelu=True)
    open_clip_state = tower.state_dict()
    hf_state = open_clip_to_hf(open_clip_state)
    back = hf_to_open_clip(hf_state)
    assert set(back) == set(open_clip_state) - {"text_projection", "logit_scale"}
    for key, tensor in back.items():
        assert torch.equal(tensor, open_clip_state[key]), key

    in_proj = open_clip_state["transformer.resblocks.1.attn.in_proj_weight"]
    width = in_proj.shape[1]
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        part = hf_state[f"text_model.encoder.layers.1.self_attn.{name}.weight"]
        assert torch.equal(part, in_proj[index * width : (index + 1) * width])
    assert torch.equal(
        hf_state["text_model.encoder.layers.0.mlp.fc2.bias"],
        open_clip_state["transformer.resblocks.0.mlp.c_proj.bias"],
    )

    hf_state_again = open_clip_to_hf(back)
    assert set(hf_state_again) == set(hf_state)
    assert all(torch.equal(hf_state_again[key], hf_state[key]) for key in hf_state)


def test_transformers_5_names_without_text_model_level_convert_the_same() -> None:
    tower = OpenCLIPTextTower.from_config(TINY_TEXT_CONFIG)
    with_level = hf_to_open_clip(open_clip_to_hf(tower.state_dict()))
    without_level = hf_to_open_clip(
        open_clip_to_hf(tower.state_dict(), text_model_level=False, position_ids=False)
    )
    assert set(with_level) == set(without_level)
    assert all(torch.equal(with_level[key], without_level[key]) for key in with_level)
