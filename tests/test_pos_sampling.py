"""POS end to end on tiny random SCVideo and ART-V models: lam = 1 is plain sampling bit for bit, lam < 1 starts
from the retrieved clip's inverted noise, and `python sample.py ... sampler.init_noise=retrieval pool=...
rewriter=template` runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from modules.generation import GenerationRequest, seeded_generators
from modules.pos.caption_embedding import EncoderMismatchError
from modules.pos.hybrid_semantics import HybridSchedule
from modules.pos.optimal_noise import OptimalNoiseApproximator
from modules.pos.pos_sampling import PosGenerator, build_pos_generator
from modules.pos.rewriters import TemplateRewriter
from modules.runtime.sampling import build_model_for_sampling
from tests.conftest import compose_config
from tests.helpers.random_weights import randomize_zero_parameters
from tests.helpers.toy_pool import build_toy_index, tiny_text_encoder

PROMPT = "a red circle moving left"
FAST = [
    "ckpt_path=null",
    "sampler.progress=false",
    "resolution.height=16",
    "resolution.width=16",
    "seeds=[0]",
]
MODELS = {
    "scvideo": ["model=scvideo", "sampler.num_steps=4", "num_frames=4", "text_encoder.init_seed=0"],
    "artv": [
        "model=artv",
        "sampler=dpmpp_2s_ancestral",
        "guidance=artv_eq1",
        "sampler.num_steps=2",
        "num_frames=2",
        "text_encoder.init_seed=0",  # the pool index's tower (conf/from_scratch/*_tiny.yaml pick seed 10)
    ],
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def pool_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 toy videos the model never saw, indexed with the tiny text encoder the tiny models use."""
    return build_toy_index(tmp_path_factory.mktemp("pos_pool"))


def tiny_model(cfg):
    """The config's random tiny model with every zero-initialised parameter (output convs, temporal attention
    outputs) made random, so that the text and every path change the prediction."""
    model = build_model_for_sampling(cfg).eval()
    randomize_zero_parameters(model.net)
    return model


def sampling_config(model: str, tmp_path: Path, extra: list[str] = ()):
    return compose_config("sample", [*MODELS[model], *FAST, *extra], tmp_path)


def request(cfg, seed: int, **options) -> GenerationRequest:
    """One video of PROMPT with `seed` at the config's size, without progress bars."""
    return GenerationRequest(
        prompts=[PROMPT],
        height=cfg.resolution.height,
        width=cfg.resolution.width,
        num_frames=cfg.num_frames,
        generators=seeded_generators([seed], "cpu"),
        progress=False,
        **options,
    )


def generate(generator, cfg, seed: int) -> torch.Tensor:
    return generator.generate(request(cfg, seed)).video


@pytest.mark.parametrize("model_name", ["scvideo", "artv"])
def test_lam_one_reproduces_plain_sampling_bit_for_bit(model_name, pool_index, tmp_path, caplog):
    cfg = sampling_config(model_name, tmp_path)
    model = tiny_model(cfg)
    plain = model.generate(request(cfg, 0)).video
    approximator = OptimalNoiseApproximator(pool_index, lam=1.0, frame_stride=1)
    with caplog.at_level(logging.INFO, logger="modules.pos.optimal_noise"):
        pos = generate(PosGenerator(model, approximator=approximator), cfg, seed=0)
    assert f"POS: '{PROMPT}' -> candidate" in caplog.text  # retrieval and inversion did run
    assert torch.equal(pos, plain)


def test_inverted_noise_changes_the_video_and_seeds_still_vary(pool_index, tmp_path):
    cfg = sampling_config("scvideo", tmp_path)
    model = tiny_model(cfg)
    plain = model.generate(request(cfg, 0)).video
    mixed = PosGenerator(model, approximator=OptimalNoiseApproximator(pool_index, lam=0.5, frame_stride=1))
    first, again, other_seed = (generate(mixed, cfg, seed) for seed in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, plain, atol=1e-3)
    assert not torch.allclose(first, other_seed, atol=1e-3)
    # lam = 0 with deterministic DDIM: the start is the inverted clip alone, so the seed no longer matters
    inverted_only = PosGenerator(
        model, approximator=OptimalNoiseApproximator(pool_index, lam=0.0, frame_stride=1)
    )
    assert torch.equal(generate(inverted_only, cfg, 0), generate(inverted_only, cfg, 1))


def test_artv_takes_the_first_frame_or_every_frame_from_the_retrieved_clip(pool_index, tmp_path):
    cfg = sampling_config("artv", tmp_path, ["num_frames=3"])
    model = tiny_model(cfg)
    starts: list[torch.Tensor] = []
    model.net.register_forward_pre_hook(lambda module, args: starts.append(args[0][-1].clone()))

    def first_evaluations(all_frames: bool) -> list[torch.Tensor]:
        """The sampler's starting noise of each frame: the input of each frame's first network evaluation."""
        starts.clear()
        approximator = OptimalNoiseApproximator(pool_index, lam=0.0, frame_stride=1, all_frames=all_frames)
        generate(PosGenerator(model, approximator=approximator), cfg, seed=0)
        evaluations_per_frame = 3  # DPM++ 2S with 2 steps: 2 + 1 evaluations
        inversion = len(starts) - 3 * evaluations_per_frame
        return starts[inversion::evaluations_per_frame]

    first_only, every_frame = first_evaluations(False), first_evaluations(True)
    assert torch.equal(first_only[0], every_frame[0])
    assert not torch.allclose(first_only[1], every_frame[1])
    assert not torch.allclose(first_only[2], every_frame[2])


def test_the_rewrite_conditions_the_later_steps(pool_index, tmp_path):
    cfg = sampling_config("scvideo", tmp_path)
    model = tiny_model(cfg)
    rewriter = TemplateRewriter(suffix=["high quality"])
    seen_texts: list[torch.Tensor] = []
    # the UNet's context [N * T, L, D]: its last row belongs to the conditional half of the CFG batch
    model.net.unet.register_forward_pre_hook(lambda module, args: seen_texts.append(args[2][-1].clone()))
    original_only = PosGenerator(model, rewriter=rewriter, hybrid=HybridSchedule(start=1.0, end=1.0))
    rewrite_after_half = PosGenerator(model, rewriter=rewriter, hybrid=HybridSchedule(start=0.5, end=0.5))
    baseline = generate(PosGenerator(model), cfg, 0)
    seen_texts.clear()
    # hybrid with start = 1: the original prompt throughout
    assert torch.equal(generate(original_only, cfg, 0), baseline)
    seen_texts.clear()
    assert not torch.allclose(generate(rewrite_after_half, cfg, 0), baseline, atol=1e-4)
    original = model.encode_text([PROMPT])[0]
    rewritten = model.encode_text([f"{PROMPT}, high quality"])[0]
    assert [torch.equal(text, original) for text in seen_texts] == [True, True, False, False]
    assert torch.equal(seen_texts[-1], rewritten)


@pytest.mark.parametrize("model_name", ["scvideo", "artv"])
def test_sample_command_line_with_retrieval_and_template_rewriter(model_name, pool_index, tmp_path, caplog):
    import sample as sample_entry_point

    overrides = [
        f"model={model_name}",
        f"prompt={PROMPT}",
        "sampler.init_noise=retrieval",
        f"pool={pool_index}",
        "rewriter=template",
    ]
    cfg = sampling_config(model_name, tmp_path, [*overrides, f"output_dir={tmp_path / 'videos'}"])
    with caplog.at_level(logging.INFO):
        written = sample_entry_point.sample(cfg)
    assert [path.name for path in written] == ["a-red-circle-moving-left_seed0.mp4"]
    assert written[0].stat().st_size > 0
    assert "POS: rewrote" in caplog.text and "-> candidate" in caplog.text


def test_retrieval_needs_a_pool_built_with_the_models_text_encoder(tmp_path):
    cfg = sampling_config("scvideo", tmp_path, ["sampler.init_noise=retrieval"])
    model = tiny_model(cfg)
    with pytest.raises(ValueError, match="pool="):
        build_pos_generator(cfg, model)
    other_index = build_toy_index(tmp_path / "other", encoder=tiny_text_encoder(init_seed=3), count=2)
    with pytest.raises(EncoderMismatchError, match="other weights"):
        PosGenerator(model, approximator=OptimalNoiseApproximator(other_index, lam=0.5))
    bad = sampling_config("scvideo", tmp_path, ["sampler.init_noise=uniform"])
    with pytest.raises(ValueError, match="gaussian"):
        build_pos_generator(bad, model)


def test_bench_pos_toy_runs_on_a_tiny_random_model_with_two_videos(pool_index, tmp_path, capsys):
    from bench import pos_toy

    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    fast = ["sampler.num_steps=2", "resolution.height=16", "resolution.width=16", "num_frames=4"]
    fast += ["text_encoder.init_seed=0"]  # the pool index's tower
    result = pos_toy.main(
        ["--ckpt", "none", "--pool", str(pool_index), "--num-videos", "2", "--benchmarks-md", str(benchmarks)]
        + ["--experiment", "toy_scvideo"]
        + [argument for override in fast for argument in ("--override", override)]
    )
    assert set(result) == {"pos_off", "pos_on"}
    assert set(result["pos_on"]) == {"color_accuracy", "direction_accuracy", "joint_accuracy"}
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("bench_pos: 2 toy videos, scvideo: POS off color")
    text = benchmarks.read_text()
    assert "<!-- other:start -->\nkept" in text
    assert "<!-- bench_pos_scvideo:start -->" in text and "<!-- bench_pos_scvideo:end -->" in text
    assert "| colour | " in text
    assert pos_toy.toy_prompts(2) == ["a red circle moving left", "a green circle moving left"]


# ---------------------------------------------------------------- multi-prompt ART-V

SECOND_PROMPT = "a red square moving left"  # also in the toy pool (its sample 7)


def multi_request(seeds: list[int], **options) -> GenerationRequest:
    """Multi-prompt videos of PROMPT then SECOND_PROMPT, two frames each, one per seed."""
    return GenerationRequest(
        prompts=[PROMPT, SECOND_PROMPT],
        height=16,
        width=16,
        frames_per_prompt=2,
        generators=seeded_generators(seeds, "cpu"),
        progress=False,
        **options,
    )


def test_multi_prompt_without_pos_and_with_lam_one_is_plain_multi_prompt_bit_for_bit(pool_index, tmp_path):
    model = tiny_model(sampling_config("artv", tmp_path))
    plain = model.generate(multi_request([0], return_masks=True))
    assert plain.video.shape == (1, 4, 3, 16, 16) and plain.masks.shape == (1, 4, 3, 16, 16)
    pos_off = PosGenerator(model).generate(multi_request([0], return_masks=True))
    assert torch.equal(pos_off.video, plain.video) and torch.equal(pos_off.masks, plain.masks)
    approximator = OptimalNoiseApproximator(pool_index, lam=1.0, frame_stride=1)
    pos_lam_one = PosGenerator(model, approximator=approximator).generate(multi_request([0]))
    assert torch.equal(pos_lam_one.video, plain.video)


def test_multi_prompt_pos_inverts_each_prompts_clip_under_the_multi_prompt_conditions(pool_index, tmp_path):
    model = tiny_model(sampling_config("artv", tmp_path))
    seen: list[dict[str, torch.Tensor]] = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    approximator = OptimalNoiseApproximator(pool_index, lam=0.0, frame_stride=1, all_frames=True)
    retrieved = approximator.retrieve(
        [PROMPT, SECOND_PROMPT],
        PosGenerator(model).texts.encode([PROMPT, SECOND_PROMPT]).pooled,
        num_frames=2,
        height=16,
        width=16,
    )
    assert [item.match.entry.caption for item in retrieved] == [
        PROMPT,
        SECOND_PROMPT,
    ]  # exact matches in the pool
    texts = [model.encode_text([PROMPT]), model.encode_text([SECOND_PROMPT])]
    clips = torch.cat([item.clip for item in retrieved])[None]
    noise = approximator.initial_noise(
        model, clips, texts, model.null_text(), sampler=model.sampler, guidance=model.guidance
    )
    assert noise.shape == (1, model.net.latent_channels, 4, 8, 8)
    latents = approximator._encode(model, clips)[0].unbind(dim=1)  # 4 frames [C, h, w]
    # one network evaluation sequence per inverted frame; group the calls by their reference tensor
    frames: dict[int, dict[str, torch.Tensor]] = {}
    for cond in seen:
        frames.setdefault(id(cond["reference"]), cond)
    conditions = list(frames.values())
    assert len(conditions) == 4
    assert not conditions[0]["reference"].any() and not conditions[0]["anchor"].any()  # frame 0: text only
    for index, cond in enumerate(conditions):
        text = texts[index // 2]
        assert torch.equal(cond["text"][-1], text[0])  # the conditional row reads its prompt's text
        if index:
            anchor = latents[0] if index < 2 else latents[1]  # prompt 1 is anchored on prompt 0's last frame
            torch.testing.assert_close(cond["anchor"][-1], anchor)
            torch.testing.assert_close(cond["reference"][-1, 2 * anchor.shape[0] :], latents[index - 1])
    # and generation starts each frame from that noise: the first network input of each frame's sampler run
    starts: list[torch.Tensor] = []
    model.net.register_forward_pre_hook(lambda module, args: starts.append(args[0][-1].clone()))
    PosGenerator(model, approximator=approximator).generate(multi_request([0]))
    evaluations_per_frame = 3  # DPM++ 2S with 2 steps: 2 + 1 evaluations
    first_inputs = starts[-4 * evaluations_per_frame :: evaluations_per_frame]
    for frame, start in enumerate(first_inputs):
        torch.testing.assert_close(start, noise[0, :, frame], atol=1e-5, rtol=1e-5)


def test_sample_command_line_multi_prompt_with_pos_and_masks(pool_index, tmp_path):
    import sample as sample_entry_point

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n{SECOND_PROMPT}\n")
    overrides = [
        f"prompts_file={prompts}",
        "multi_prompt=true",
        "frames_per_prompt=2",
        "save_mask=true",
        "sampler.init_noise=retrieval",
        f"pool={pool_index}",
        "rewriter=template",
        f"output_dir={tmp_path / 'videos'}",
    ]
    written = sample_entry_point.sample(sampling_config("artv", tmp_path, overrides))
    assert [path.name for path in written] == [
        "multi-a-red-circle-moving-left_seed0.mp4",
        "multi-a-red-circle-moving-left_seed0_mask.mp4",
    ]
    first_frame = tmp_path / "first.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 0, 0)).save(first_frame)
    cfg = sampling_config("artv", tmp_path, [*overrides, f"first_frame={first_frame}"])
    with pytest.raises(ValueError, match="first frame"):
        sample_entry_point.sample(cfg)
