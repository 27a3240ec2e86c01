"""The generation API (modules/generation.py): requests are checked against the abilities a denoiser declares before
any work; a third denoiser written against `VideoDenoiser` alone trains and samples through the shared code; a video
made in a batch is the video made alone with its seed (SCVideo, ART-V, ancestral samplers, POS, sample.py); and the
inference precision switch (modules/runtime/precision.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

import sample
from modules.artv.artv_denoiser import ARTVDenoiser
from modules.generation import GenerationRequest, seeded_generators
from modules.runtime.precision import InferencePrecision, inference_precision
from modules.runtime.sampling import build_model_for_sampling
from modules.scvideo.scvideo_denoiser import SCVideoDenoiser
from tests.conftest import compose_config
from tests.helpers.random_weights import randomize_zero_parameters
from tests.helpers.toy_denoiser import TOY_NET_TARGET
from tests.helpers.toy_pool import build_toy_index

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving down"]
SEEDS = [3, 4, 5]
SIZE = 16
UNGUIDED = ["guidance=cfg", "guidance.scale=1.0"]  # one conditional forward: nothing amplifies rounding
MODELS = {
    # text_encoder.init_seed=0: the toy pool index's tower (the tiny models' own is seed 10)
    "scvideo": ["model=scvideo", "sampler.num_steps=4", "num_frames=3", "text_encoder.init_seed=0"],
    "scvideo_unguided": ["model=scvideo", "sampler.num_steps=4", "num_frames=3", *UNGUIDED],
    "scvideo_ancestral": [
        "model=scvideo",
        "sampler=euler_ancestral",
        "sampler.num_steps=4",
        "num_frames=3",
        *UNGUIDED,
    ],
    "artv": [
        "model=artv",
        "sampler=dpmpp_2s_ancestral",
        "guidance=artv_eq1",
        "sampler.num_steps=2",
        "num_frames=2",
        "text_encoder.init_seed=0",  # the toy pool index's tower
    ],
}
# A batch changes how float32 sums are grouped (the GEMMs of a batch block their rows differently): each network
# evaluation differs from the lone video's by ~2e-6. Unguided SCVideo keeps that near 1e-5; CFG (x10 in the toy
# config) and ART-V's eq. (1) (w_txt 6.5) scale it with their weights, and ART-V's masked composition divides by
# sqrt(a_t) at high noise, so those videos agree to ~1e-4 (latents of magnitude ~2; every check also allows a
# relative 1e-5). A video drawn with another
# video's noise differs by ~1.
TOLERANCE = {
    "scvideo_unguided": 1e-5,
    "scvideo_ancestral": 3e-5,  # Euler ancestral's first-order steps do not damp a difference as DDIM's do
    "scvideo": 1e-4,
    "artv": 3e-4,
}
FAST = [
    "ckpt_path=null",
    "sampler.progress=false",
    f"resolution.height={SIZE}",
    f"resolution.width={SIZE}",
]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def pool_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy_index(tmp_path_factory.mktemp("pool"))


def sampling_config(model: str, tmp_path: Path, extra: list[str] = ()):
    cfg = compose_config("sample", [*MODELS[model], *FAST, *extra], tmp_path)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "videos")
    return cfg


def tiny_model(cfg):
    """The config's random model, every zero-initialised parameter of its net made random (every path counts)."""
    model = build_model_for_sampling(cfg).eval()
    randomize_zero_parameters(model.net)
    return model


def use_toy_net(cfg) -> None:
    """Replace the config's net by the third denoiser (tests/helpers/toy_denoiser.py)."""
    with open_dict(cfg):
        cfg.model.net = OmegaConf.create(
            {"_target_": TOY_NET_TARGET, "latent_channels": 12, "context_dim": cfg.backbone.unet.context_dim}
        )
        cfg.model.first_frame_lead_fraction = 0.0  # the toy net takes one step per clip


def request(prompts: list[str], seeds: list[int], num_frames: int, **options: Any) -> GenerationRequest:
    return GenerationRequest(
        prompts=prompts,
        height=SIZE,
        width=SIZE,
        num_frames=num_frames,
        generators=seeded_generators(seeds, "cpu"),
        progress=False,
        **options,
    )


def refuse_to_build(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the model was built: the request should have been refused before")


# ---------------------------------------------------------------- abilities


def test_abilities_are_declared_and_refusals_name_the_option_and_the_model() -> None:
    with pytest.raises(ValueError) as refused:
        SCVideoDenoiser.abilities.check(first_frame=True)
    assert str(refused.value) == (
        "first_frame: SCVideo cannot start from a given first frame (text-to-video only); use model=artv "
        "<first_frame>"
    )
    with pytest.raises(ValueError, match=r"^multi_prompt: SCVideo cannot"):
        SCVideoDenoiser.abilities.check(multi_prompt=True)
    with pytest.raises(ValueError, match=r"^save_mask: SCVideo has no masks"):
        SCVideoDenoiser.abilities.check(masks=True)
    ARTVDenoiser.abilities.check(first_frame=True, multi_prompt=True, masks=True)


def test_a_request_states_its_videos_once() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest(prompts=["a"], height=8, width=8, num_frames=2, frames_per_prompt=2)
    with pytest.raises(ValueError, match="one generator per video"):
        request(PROMPTS, SEEDS[:2], num_frames=2)
    multi = GenerationRequest(
        prompts=PROMPTS[:2],
        height=8,
        width=8,
        frames_per_prompt=3,
        generators=seeded_generators(SEEDS, "cpu"),
    )
    assert (multi.batch_size, multi.frames_per_video) == (3, 6)
    assert multi.prompt_grid() == [PROMPTS[:2]] * 3


# ---------------------------------------------------------------- a third denoiser


def test_a_denoiser_written_against_the_interface_alone_trains_and_generates(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=toy_scvideo", "sampler.num_steps=2"], tmp_path)
    use_toy_net(cfg)
    module = instantiate(cfg.model)
    optimizer = module.configure_optimizers()["optimizer"]
    before = [p.detach().clone() for _, p in module.net.trainable_named_parameters()]
    batch = {"video": torch.rand(2, 4, 3, 32, 32) * 2 - 1, "caption": PROMPTS[:2]}
    loss = module.diffusion_loss(batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    after = [p.detach() for _, p in module.net.trainable_named_parameters()]
    assert all(not torch.equal(old, new) for old, new in zip(before, after, strict=True))

    module.eval()
    result = module.generate(
        GenerationRequest(
            prompts=PROMPTS[:2],
            height=32,
            width=32,
            num_frames=3,
            generators=seeded_generators(SEEDS[:2], "cpu"),
            return_latents=True,
            progress=False,
        )
    )
    assert result.video.shape == (2, 3, 3, 32, 32) and result.latents.shape == (2, 12, 3, 16, 16)
    assert result.masks is None and torch.isfinite(result.video).all()
    module.net.generate = refuse_to_build  # a refused request never reaches the net
    with pytest.raises(ValueError, match=r"^save_mask: Toy has no masks to return; use model=artv"):
        module.generate(request(PROMPTS[:1], SEEDS[:1], num_frames=2, return_masks=True))


def test_sample_py_batches_a_denoiser_it_does_not_know_and_refuses_what_it_cannot_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = sampling_config("scvideo", tmp_path, ["seeds=[0,1,2]", "batch_size=2", "num_frames=2"])
    use_toy_net(cfg)
    written = sample.sample(cfg)
    assert [path.name for path in written] == [
        f"a-red-circle-moving-left_seed{seed}.mp4" for seed in (0, 1, 2)
    ]
    (tmp_path / "start.png").write_bytes(b"")
    with open_dict(cfg):
        cfg.first_frame = str(tmp_path / "start.png")
    monkeypatch.setattr(sample, "build_model_for_sampling", refuse_to_build)
    with pytest.raises(ValueError, match=r"^first_frame: Toy cannot start from a given first frame"):
        sample.sample(cfg)


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("model_name", ["scvideo_unguided", "scvideo_ancestral", "scvideo", "artv"])
def test_a_video_made_in_a_batch_is_the_video_made_alone(model_name: str, tmp_path: Path) -> None:
    cfg = sampling_config(model_name, tmp_path)
    model = tiny_model(cfg)
    tolerance = TOLERANCE[model_name]
    batched = model.generate(request(PROMPTS, SEEDS, cfg.num_frames, return_latents=True))
    for index, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS, strict=True)):
        alone = model.generate(request([prompt], [seed], cfg.num_frames, return_latents=True))
        torch.testing.assert_close(
            batched.latents[index : index + 1], alone.latents, atol=tolerance, rtol=1e-5
        )
        torch.testing.assert_close(batched.video[index : index + 1], alone.video, atol=tolerance, rtol=1e-5)
    # not vacuous: one generator shared by the batch gives the later videos other noise
    shared = torch.Generator().manual_seed(SEEDS[0])
    one_stream = model.generate(
        GenerationRequest(
            prompts=PROMPTS, height=SIZE, width=SIZE, num_frames=cfg.num_frames, generators=[shared] * 3
        )
    )
    assert float((one_stream.video[1:] - batched.video[1:]).abs().max()) > 0.1


def test_artv_batches_multi_prompt_and_image_to_video_videos_frame_by_frame(tmp_path: Path) -> None:
    model = tiny_model(sampling_config("artv", tmp_path))
    first_frames = torch.rand(3, 3, SIZE, SIZE) * 2 - 1

    def multi(seeds: list[int], first_frame: torch.Tensor) -> Any:
        return model.generate(
            GenerationRequest(
                prompts=PROMPTS[:2],
                height=SIZE,
                width=SIZE,
                frames_per_prompt=2,
                generators=seeded_generators(seeds, "cpu"),
                first_frame=first_frame,
                return_masks=True,
                progress=False,
            )
        )

    batched = multi(SEEDS, first_frames)
    assert batched.video.shape == batched.masks.shape == (3, 4, 3, SIZE, SIZE)
    for index, seed in enumerate(SEEDS):
        alone = multi([seed], first_frames[index : index + 1])
        torch.testing.assert_close(
            batched.video[index : index + 1], alone.video, atol=TOLERANCE["artv"], rtol=0
        )
        torch.testing.assert_close(
            batched.masks[index : index + 1], alone.masks, atol=TOLERANCE["artv"], rtol=0
        )


@pytest.mark.parametrize("model_name", ["scvideo", "artv"])
def test_sample_py_with_pos_writes_the_same_videos_in_batches_of_four_as_one_by_one(
    model_name: str, pool_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python sample.py prompts_file=... seeds=[0,1,2,3] batch_size=4` with POS (retrieval and a rewriter)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n{PROMPTS[1]}\n")
    videos: dict[tuple[int, str], torch.Tensor] = {}
    batch_size = 0

    def keep(path: Path, video: torch.Tensor, fps: float, **kwargs: Any) -> Path:
        videos[batch_size, Path(path).name] = video
        return Path(path)

    monkeypatch.setattr(sample, "write_video", keep)
    monkeypatch.setattr(sample, "build_model_for_sampling", tiny_model)
    overrides = [
        f"prompts_file={prompts}",
        "seeds=[0,1,2,3]",
        "sampler.init_noise=retrieval",
        f"pool={pool_index}",
        "pos.approximator.lam=0.5",
        "rewriter=template",
    ]
    for batch_size in (4, 1):
        cfg = sampling_config(model_name, tmp_path, [*overrides, f"batch_size={batch_size}"])
        assert len(sample.sample(cfg)) == 8
    names = sorted(name for size, name in videos if size == 4)
    assert len(names) == 8 and names == sorted(name for size, name in videos if size == 1)
    for name in names:
        torch.testing.assert_close(videos[4, name], videos[1, name], atol=TOLERANCE[model_name], rtol=1e-5)
    assert not torch.allclose(videos[4, names[0]], videos[4, names[1]], atol=1e-3)


# ---------------------------------------------------------------- precision


def test_precision_is_two_top_level_keys_read_by_sample_eval_and_the_sample_logger(tmp_path: Path) -> None:
    for name in ("sample", "eval"):
        cfg = compose_config(name, ["inference_precision=bf16"], tmp_path)
        assert inference_precision(cfg) == InferencePrecision("bf16", allow_tf32=True)
    cfg = compose_config("train", ["inference_precision=bf16", "allow_tf32=false"], tmp_path)
    logger = instantiate(cfg.callbacks.video_samples)
    assert logger.precision == InferencePrecision("bf16", allow_tf32=False)
    with pytest.raises(ValueError, match=r"^inference_precision must be one of \('fp32', 'bf16', 'fp16'\)"):
        inference_precision(OmegaConf.create({"inference_precision": "int8"}))


def test_fp16_on_the_cpu_fails_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sample, "build_model_for_sampling", refuse_to_build)
    cfg = sampling_config("scvideo", tmp_path, ["inference_precision=fp16", "device=cpu"])
    with pytest.raises(ValueError, match=r"^inference_precision=fp16 needs a CUDA device, got cpu"):
        sample.sample(cfg)


def test_bf16_autocast_on_the_cpu_gives_a_finite_video_close_to_fp32(tmp_path: Path) -> None:
    model = tiny_model(sampling_config("scvideo_unguided", tmp_path))
    dtypes: list[torch.dtype] = []
    model.net.unet.out.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    cpu = torch.device("cpu")
    with InferencePrecision("fp32").applied(cpu):
        full = model.generate(request(PROMPTS[:2], SEEDS[:2], num_frames=3)).video
    with InferencePrecision("bf16").applied(cpu):
        half = model.generate(request(PROMPTS[:2], SEEDS[:2], num_frames=3)).video
    assert set(dtypes) == {torch.float32, torch.bfloat16}  # the UNet did run in bf16 under the switch
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert 0 < float((half - full).abs().max()) < 0.1
