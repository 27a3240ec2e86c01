"""POS on the toy "shapes" task: toy-scorer colour / direction accuracy of N videos with POS off and on (same seeds).

    python -m bench.pos_toy --ckpt logs/train/runs/demo/checkpoints/last.ckpt --make-pool data/shapes_pool \
        --experiment toy_scvideo --num-videos 84
    python -m bench.pos_toy --ckpt ... --pool pool/index.safetensors --experiment toy_artv --model artv
    python -m bench.pos_toy --ckpt ... --pool pool/index.safetensors --rewriter template --lam 0.3 --no-write

Video i has the toy caption of combination i (colour i % 7, shape (i // 7) % 3, direction (i // 21) % 4, as the toy
data set orders them; 84 videos cover every combination once) and seed `--seed + i`; both runs use the same seeds.
"POS off" is the model's plain sampling; "POS on" is `sampler.init_noise=retrieval` with `--rewriter` (none by
default, so the numbers isolate the optimal-noise approximator; template adds the rewriter and hybrid semantics).
Each video is scored by `datamodules.toy_scorer.score_batch`. The settings are those of `python sample.py`: the same
Hydra config (conf/sample.yaml) with `--experiment` (the toy experiment the checkpoint was trained with, so its
sampler and guidance settings apply), and `--override key=value` takes any of its keys.

The pool must hold toy videos the model was not trained on. `--make-pool DIR` writes them (toy generator seed
`--pool-seed`, default 4321, which is not the training data's 1234; same size, length and frame rate as the
training videos) and indexes them with the model's own text encoder into DIR/index.safetensors.

Writes the `bench_pos_<model>` section of docs/BENCHMARKS.md (other sections are kept) unless `--no-write`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from bench.report import BENCHMARKS_MD, machine_description, utc_now, write_section
from datamodules.shard_writer import write_shard_set
from datamodules.tar_samples import expand_shard_urls
from datamodules.toy_scorer import score_batch
from datamodules.toy_shapes import COLORS, DIRECTIONS, SHAPES, toy_caption, toy_sample_factory
from modules.generation import GenerationRequest, seeded_generators
from modules.pos.build_index import IndexBuilder
from modules.pos.caption_embedding import CaptionEmbedder
from modules.pos.pos_sampling import PosGenerator, build_pos_generator
from modules.runtime.sampling import build_model_for_sampling

LOGGER = logging.getLogger("bench.pos_toy")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SECTION = "bench_pos_{model}"
METRICS = ("color_accuracy", "direction_accuracy", "joint_accuracy")


def toy_prompts(count: int) -> list[str]:
    """Captions of toy combinations 0..count-1, in the toy data set's order."""
    colors, directions = list(COLORS), list(DIRECTIONS)
    return [
        toy_caption(
            colors[i % len(colors)], SHAPES[(i // len(colors)) % len(SHAPES)], directions[(i // 21) % 4]
        )
        for i in range(count)
    ]


def sampling_config(args: argparse.Namespace, output_dir: Path) -> DictConfig:
    """conf/sample.yaml with this run's choices, composed as sample.py composes it."""
    overrides = [
        f"model={args.model}",
        *([f"experiment={args.experiment}"] if args.experiment else []),
        f"ckpt_path={'null' if args.ckpt == 'none' else args.ckpt}",
        "sampler.init_noise=retrieval",
        f"rewriter={args.rewriter}",
        f"pos.approximator.lam={args.lam}",
        "sampler.progress=false",
        *args.override,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="sample", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(Path.cwd())
            cfg.paths.output_dir = str(output_dir)
            del cfg.hydra
    return cfg


def make_pool(directory: Path, model: torch.nn.Module, count: int, seed: int) -> Path:
    """Write `count` toy videos (generator seed `seed`) as shards in `directory` and index them; returns the index."""
    make_sample = toy_sample_factory(seed, "val", size=64, num_frames=24, fps=8.0)
    write_shard_set(directory / "shards", count, 64, make_sample, description="toy pool")
    index_path = directory / "index.safetensors"
    builder = IndexBuilder(CaptionEmbedder(model.text_encoder), progress=False)
    builder.build(expand_shard_urls(str(directory / "shards"), "--make-pool"), index_path)
    return index_path


def generate_all(
    generator: PosGenerator, cfg: DictConfig, prompts: list[str], first_seed: int
) -> torch.Tensor:
    """One video per prompt, seed first_seed + i: `[N, T, 3, H, W]` on the CPU."""
    videos = []
    for offset, prompt in enumerate(prompts):
        request = GenerationRequest(
            prompts=[prompt],
            height=cfg.resolution.height,
            width=cfg.resolution.width,
            num_frames=cfg.num_frames,
            generators=seeded_generators([first_seed + offset], generator.model.device),
            progress=False,
        )
        videos.append(generator.generate(request).video[0].cpu())
        LOGGER.info("video %d / %d: %r", offset + 1, len(prompts), prompt)
    return torch.stack(videos)


def summary_line(args: argparse.Namespace, plain: dict[str, float], pos: dict[str, float]) -> str:
    def scores(result: dict[str, float]) -> str:
        return " ".join(f"{name.removesuffix('_accuracy')} {result[name]:.3f}" for name in METRICS)

    delta = " ".join(f"{name.removesuffix('_accuracy')} {pos[name] - plain[name]:+.3f}" for name in METRICS)
    return (
        f"bench_pos: {args.num_videos} toy videos, {args.model}: POS off {scores(plain)} | POS on (lam {args.lam}, "
        f"rewriter {args.rewriter}) {scores(pos)} | change {delta}"
    )


def markdown_section(args: argparse.Namespace, cfg: DictConfig, plain: dict, pos: dict, command: str) -> str:
    rows = [
        f"| {name} | {plain[metric]:.3f} | {pos[metric]:.3f} | {pos[metric] - plain[metric]:+.3f} |"
        for name, metric in zip(("colour", "direction", "colour and direction"), METRICS, strict=True)
    ]
    return "\n".join(
        [
            f"## POS on the toy shapes task, {args.model} (bench/pos_toy.py)",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine_description()}",
            f"- Command: `{command}`",
            f"- Model: {args.model}, checkpoint `{args.ckpt}`; sampler {cfg.sampler._target_.rsplit('.', 1)[-1]} "
            f"{cfg.sampler.num_steps} steps, guidance {cfg.guidance._target_.rsplit('.', 1)[-1]}; "
            f"{cfg.num_frames} frames at {cfg.resolution.height}x{cfg.resolution.width}",
            f"- Workload: {args.num_videos} videos, toy combinations 0..{args.num_videos - 1}, seeds "
            f"{args.seed}..{args.seed + args.num_videos - 1}, the same seeds with POS off and on",
            f"- POS on: pool `{cfg.pool}`, lam {args.lam}, top_k {cfg.pos.approximator.top_k}, choice "
            f"{cfg.pos.approximator.choice}, rewriter {args.rewriter}",
            "- Scored by `datamodules.toy_scorer.score_batch` (fraction of videos showing the caption's colour / "
            "direction)",
            "",
            "| accuracy | POS off | POS on | change |",
            "|---|---|---|---|",
            *rows,
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt", required=True, help="Lightning checkpoint; 'latest' or 'none' (random weights)"
    )
    pool = parser.add_mutually_exclusive_group(required=True)
    pool.add_argument("--pool", help="index of toy shards not used for training (modules.pos.build_index)")
    pool.add_argument(
        "--make-pool", type=Path, help="write toy pool shards and their index into this directory"
    )
    parser.add_argument(
        "--pool-size", type=int, default=168, help="videos in a --make-pool pool (2 per combination)"
    )
    parser.add_argument("--pool-seed", type=int, default=4321, help="toy generator seed of --make-pool")
    parser.add_argument("--num-videos", type=int, default=84, help="N videos per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of video 0 (video i uses seed + i)")
    parser.add_argument("--model", default="scvideo", help="model config group entry (scvideo, artv)")
    parser.add_argument(
        "--experiment",
        default=None,
        help="experiment the checkpoint was trained with (toy_scvideo, toy_artv)",
    )
    parser.add_argument(
        "--lam", type=float, default=0.5, help="POS fresh-noise weight (pos.approximator.lam)"
    )
    parser.add_argument(
        "--rewriter", default="none", help="rewriter config group entry (none, template, chat)"
    )
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="sample.yaml override"
    )
    parser.add_argument(
        "--benchmarks-md", type=Path, default=BENCHMARKS_MD, help="file whose section is written"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the benchmarks file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.num_videos < 1:
        raise SystemExit("--num-videos must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bench_pos_") as output_dir:
        cfg = sampling_config(args, Path(output_dir))
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        model = build_model_for_sampling(cfg).to(device).eval()
        pool = (
            args.pool
            if args.make_pool is None
            else make_pool(args.make_pool, model, args.pool_size, args.pool_seed)
        )
        with open_dict(cfg):
            cfg.pool = str(pool)
        prompts = toy_prompts(args.num_videos)
        plain = score_batch(generate_all(PosGenerator(model), cfg, prompts, args.seed), prompts)
        pos = score_batch(generate_all(build_pos_generator(cfg, model), cfg, prompts, args.seed), prompts)
    print(summary_line(args, plain, pos))
    if not args.no_write:
        command = " ".join(["python -m bench.pos_toy", *(argv if argv is not None else sys.argv[1:])])
        section = SECTION.format(model=args.model)
        write_section(args.benchmarks_md, section, markdown_section(args, cfg, plain, pos, command))
        LOGGER.info("wrote the %s section of %s", section, args.benchmarks_md)
    return {"pos_off": plain, "pos_on": pos}


if __name__ == "__main__":
    main()
