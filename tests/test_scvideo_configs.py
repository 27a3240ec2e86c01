"""SCVideo configs: conf/model/scvideo.yaml with the toy and the paper experiments compose, carry the paper's
numbers, and build working models (the paper-size one on the meta device)."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from modules.scvideo import SCVideoDenoiser, is_new_parameter
from tests.conftest import compose_config

SD14_SHARED_PARAMETERS = 859_520_964


def test_paper_experiment_has_the_appendix_numbers_and_builds_on_meta(tmp_path):
    cfg = compose_config("train", ["experiment=scvideo_webvid256", "trainer=a100x4"], tmp_path)
    assert (cfg.data.num_frames, cfg.data.frame_stride, cfg.data.batch_size) == (16, 8, 5)
    assert (cfg.resolution.height, cfg.resolution.width) == (256, 256)
    assert (
        cfg.trainer.devices == 4 and cfg.trainer.max_steps == 80_000 and cfg.trainer.precision == "bf16-mixed"
    )
    optimizer = cfg.model.optimizer
    assert optimizer._target_ == "torch.optim.AdamW"
    assert (optimizer.lr, list(optimizer.betas), optimizer.eps, optimizer.weight_decay) == (
        3e-5,
        [0.9, 0.999],
        1e-8,
        1e-2,
    )
    assert cfg.model.lr_scheduler.warmup_steps == 1000 and cfg.model.lr_scheduler.total_steps == 80_000
    assert cfg.model.sampler._target_.endswith("DDIMSampler") and cfg.model.sampler.num_steps == 50
    assert cfg.model.guidance.scale == 10.0
    assert cfg.model.net.trainable == "paper"
    assert cfg.backbone.unet.model_channels == 320 and cfg.backbone.unet.context_dim == 768

    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    assert isinstance(net, SCVideoDenoiser)
    shared = sum(p.numel() for key, p in net.unet.named_parameters() if not is_new_parameter(key))
    assert shared == SD14_SHARED_PARAMETERS


def test_toy_experiment_trains_everything_and_the_loss_runs(tmp_path):
    cfg = compose_config("train", ["experiment=toy_scvideo"], tmp_path)
    assert cfg.model.net.trainable == "all" and cfg.data.num_frames == 8
    assert cfg.model.ema_decay < 0.9999 and cfg.model.optimizer.lr > 3e-5
    module = instantiate(cfg.model)
    assert isinstance(module.net, SCVideoDenoiser)
    trainable = sum(p.numel() for _, p in module.net.trainable_named_parameters())
    assert trainable == sum(p.numel() for p in module.net.parameters())

    batch = {
        "video": torch.rand(2, 4, 3, cfg.resolution.height, cfg.resolution.width) * 2 - 1,
        "caption": ["a red circle moving left", "a blue square moving up"],
    }
    loss = module.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for _, p in module.net.trainable_named_parameters())


PAPER_OBJECTIVE = [  # the toy's deviations off: eps-MSE, one uniform step per clip, SD's schedule
    "model.objective=eps",
    "model.net.prediction=eps",
    "schedule.terminal_snr=null",
    "model.high_noise_fraction=0.0",
    "model.first_frame_lead_fraction=0.0",
]


def test_min_snr_weighting_matches_per_sample_formula(tmp_path):
    cfg = compose_config(
        "train", ["experiment=toy_scvideo", "model.min_snr_gamma=1.0", *PAPER_OBJECTIVE], tmp_path
    )
    module = instantiate(cfg.model)
    alphas_cumprod = module.schedule.alphas_cumprod
    t = torch.tensor([0, 200, 400, 999])
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    weights = module.loss_weights(t)
    assert torch.allclose(weights, torch.minimum(snr, torch.ones(4)) / snr)
    assert (
        weights[-1] == 1.0 and weights[0] < 0.01
    )  # high noise keeps weight 1, the cleanest step almost none

    batch = {
        "video": torch.rand(3, 2, 3, cfg.resolution.height, cfg.resolution.width) * 2 - 1,
        "caption": ["a red circle moving left"] * 3,
    }
    # the weighted loss equals the hand-made weighted mean of the per-sample MSEs under the same draws
    weighted = module.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    seen = {}
    forward = module.net.forward

    def recording_forward(x_t, t, cond):
        seen["t"] = t
        eps = forward(x_t, t, cond)
        seen["eps"] = eps
        return eps

    module.net.forward = recording_forward
    module.min_snr_gamma = None
    plain = module.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    torch.randint(0, 1000, (3,), generator=generator)
    noise = torch.randn(seen["eps"].shape, generator=generator)
    per_sample = (seen["eps"] - noise).pow(2).flatten(1).mean(1)
    assert torch.allclose(plain, per_sample.mean(), rtol=1e-5)
    module.min_snr_gamma = 1.0
    assert torch.allclose(weighted, (module.loss_weights(seen["t"]) * per_sample).mean(), rtol=1e-5)


def test_min_snr_gamma_must_be_positive(tmp_path):
    cfg = compose_config("train", ["experiment=toy_scvideo", "model.min_snr_gamma=0"], tmp_path)
    with pytest.raises(InstantiationException, match=r"min_snr_gamma must be > 0 .*<model\.min_snr_gamma>"):
        instantiate(cfg.model)
