"""ART-V at paper size on the meta device (parameter counts of supplementary Table 1, the T2I-Adapter and SD 2.1
key layouts, FLOPs of Table 2), the MAC counter of bench/flops.py on a hand-countable model, and the ART-V configs
wired into the shared VideoDiffusionModule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from bench.flops import TABLE2_GFLOPS, artv_macs, build_artv_net, counting_macs
from modules.artv.anchor_attention import is_anchor_parameter
from modules.blocks.attention import Attention
from modules.generation import GenerationRequest, seeded_generators
from tests.conftest import compose_config

REFERENCE_DIR = Path(__file__).resolve().parent / "fixtures" / "reference"
UNET_PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def paper_net() -> nn.Module:
    """The paper configuration (experiment=artv_webvid, anchor blocks on), on the meta device."""
    return build_artv_net(anchor_attention=True)


def num_parameters(*modules: nn.Module) -> int:
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def layout(module: nn.Module) -> dict[str, list[int]]:
    return {key: list(tensor.shape) for key, tensor in module.state_dict().items()}


# ---------------------------------------------------------------- Table 1 sizes and reference layouts


def test_paper_size_parameter_counts_match_table1_with_the_anchor_block(paper_net: nn.Module) -> None:
    dynamic = num_parameters(paper_net.dynamic_unet, paper_net.dynamic_adapter)
    mask = num_parameters(paper_net.mask_unet, paper_net.mask_adapter)
    assert dynamic == pytest.approx(1167.69e6, rel=5e-4)  # Table 1: Φdynamic 1167.69 M
    assert mask == pytest.approx(51.18e6, rel=5e-4)  # Table 1: Φmask 51.18 M


def test_paper_size_parameter_counts_without_the_anchor_block() -> None:
    net = build_artv_net(anchor_attention=False)
    assert num_parameters(net.dynamic_unet) == 865_910_724  # SD 2.1 UNet
    assert num_parameters(net.mask_unet) == 38_798_849
    assert num_parameters(net.dynamic_unet, net.dynamic_adapter) == 942_750_084
    assert num_parameters(net.mask_unet, net.mask_adapter) == 41_878_721


@pytest.mark.parametrize(
    ("listing", "attribute", "elements"),
    [
        ("t2i_adapter_artv_dynamic.json", "dynamic_adapter", 76_839_360),
        ("t2i_adapter_artv_mask.json", "mask_adapter", 3_079_872),
    ],
)
def test_adapters_have_the_reference_keys_and_shapes(
    paper_net: nn.Module, listing: str, attribute: str, elements: int
) -> None:
    adapter = getattr(paper_net, attribute)
    assert layout(adapter) == json.loads((REFERENCE_DIR / listing).read_text())
    assert num_parameters(adapter) == elements


def test_phi_dynamic_holds_every_sd21_parameter_under_its_own_key(paper_net: nn.Module) -> None:
    reference = json.loads((REFERENCE_DIR / "sd21_unet.json").read_text())
    sd_layout = {key.removeprefix(UNET_PREFIX): shape for key, shape in reference.items()}
    model_layout = layout(paper_net.dynamic_unet)
    shared = {key: shape for key, shape in model_layout.items() if not is_anchor_parameter(key)}
    assert shared == sd_layout
    anchor_keys = [key for key in model_layout if is_anchor_parameter(key)]
    # one anchor block in each of the 16 spatial transformers: attn1 and attn2 5 tensors each, ff 4, norms 6
    assert len(anchor_keys) == 16 * 20
    assert model_layout["input_blocks.1.1.anchor_block.attn2.to_k.weight"] == [
        320,
        64,
    ]  # 64-dim anchor tokens


# ---------------------------------------------------------------- MAC counting (bench/flops.py)


class HandCountable(nn.Module):
    """conv3x3 (3 -> 8) on 5x5, then tokens through Linear(8 -> 6) and 2-head self-attention (inner 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.grouped = nn.Conv2d(8, 8, kernel_size=1, groups=4)
        self.attention = Attention(8, None, num_heads=2, head_dim=4)
        self.linear = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.grouped(self.conv(x)).flatten(2).transpose(1, 2)  # [N, 25, 8]
        return self.linear(self.attention(tokens))


def test_mac_counter_matches_a_hand_count() -> None:
    model = HandCountable()
    with counting_macs(model) as count:
        model(torch.randn(2, 3, 5, 5))
    conv = 2 * 8 * 25 * (3 * 9)  # N * C_out * H * W * C_in * k^2
    grouped = 2 * 8 * 25 * (8 // 4)  # groups=4: 2 input channels per output
    projections = 4 * (2 * 25 * 8 * 8)  # to_q, to_k, to_v, to_out: N * L * in * out
    linear = 2 * 25 * 8 * 6
    assert count.conv_linear == conv + grouped + projections + linear
    assert count.attention == 2 * (2 * 2 * 25 * 25 * 4)  # Q K^T and A V: N * heads * Lq * Lk * d each
    with torch.no_grad():
        model(torch.randn(2, 3, 5, 5))
    assert count.total == conv + grouped + projections + linear + 2 * (2 * 2 * 25 * 25 * 4)  # hooks removed


def test_artv_conv_linear_macs_match_table2_at_320(paper_net: nn.Module) -> None:
    count = artv_macs(paper_net, resolution=320)
    assert count.conv_linear / 1e9 == pytest.approx(TABLE2_GFLOPS["ART-V"][320], rel=5e-3)
    assert count.attention > 0


def test_modelscope_conv_linear_macs_match_table2() -> None:
    pytest.importorskip("diffusers")  # the ModelScope baseline is diffusers' UNet3DConditionModel (dev extra)
    from bench.flops import build_modelscope_unet, modelscope_macs

    unet = build_modelscope_unet()
    for resolution in (320, 448, 768):
        count = modelscope_macs(unet, resolution)
        assert count.conv_linear / 1e9 == pytest.approx(TABLE2_GFLOPS["ModelScope"][resolution], rel=5e-3)


# ---------------------------------------------------------------- configs and the shared LightningModule


@pytest.mark.usefixtures("single_torch_thread")
def test_toy_experiment_trains_and_generates_through_the_shared_module(tmp_path) -> None:
    cfg = compose_config(
        "train", ["experiment=toy_artv", "sampler.num_steps=2", "sampler.progress=false"], tmp_path
    )
    # the toy samples deterministically (the ancestral noise whitens the tiny model's colours); the paper
    # experiment keeps DPM++ 2S ancestral (test below)
    assert cfg.sampler._target_.endswith("DDIMSampler") and cfg.sampler.eta == 0.0
    # eq. (1) weights as the paper (ART-V supplementary, Inference)
    assert dict(cfg.guidance.weights) == {"reference": 0.25, "anchor": 0.25, "text": 6.5}
    module = instantiate(cfg.model)
    num_frames, size = cfg.data.num_frames, cfg.resolution.height
    batch = {
        "video": torch.rand(2, num_frames, 3, size, size) * 2 - 1,
        "caption": ["a red circle moving left"] * 2,
    }
    loss = module.diffusion_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for _, p in module.net.trainable_named_parameters()]
    assert all(grad is not None for grad in grads[:5])
    module.eval()
    video = module.generate(
        GenerationRequest(
            prompts=["a red circle moving left", "a blue square moving up"],
            height=size,
            width=size,
            num_frames=3,
            generators=seeded_generators([0, 1], "cpu"),
            progress=False,
        )
    ).video
    assert video.shape == (2, 3, 3, size, size)
    assert float(video.abs().max()) <= 1.0


def test_paper_experiment_composes_with_table4_settings(tmp_path) -> None:
    cfg = compose_config("train", ["experiment=artv_webvid", "trainer=a100x4", "resolution=448px"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    data, trainer, model = resolved["data"], resolved["trainer"], resolved["model"]
    assert data["batch_size"] * trainer["devices"] * trainer["accumulate_grad_batches"] == 480  # Table 4
    assert data["target_fps"] == 8 and data["frame_stride"] is None  # Table 4
    assert model["optimizer"]["lr"] == 1.0e-5 and model["optimizer"]["betas"] == [0.9, 0.999]  # Table 4
    assert model["ema_decay"] == 0.9999  # Table 4
    assert trainer["precision"] == "bf16-mixed"
    assert resolved["resolution"] == {"height": 448, "width": 448}
    assert resolved["sampler"]["_target_"].endswith("DPMPP2SAncestralSampler")
    assert resolved["sampler"]["num_steps"] == 50
    assert resolved["guidance"]["weights"] == {"reference": 0.25, "anchor": 0.25, "text": 6.5}  # eq. (1)
    assert model["net"]["dynamic_unet"]["model_channels"] == 320
    assert set(model["condition_dropout"]) == {"reference", "anchor", "text"}
