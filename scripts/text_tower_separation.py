"""How far apart does a (random, frozen) text tower put the toy captions' words? One line per init seed.

    python scripts/text_tower_separation.py experiment=toy_artv                 # seeds 0-59
    python scripts/text_tower_separation.py experiment=toy_scvideo --seeds 0 10   # overrides before --seeds

The toy runs use a random frozen open_clip tower as a stand-in for a pretrained one; its init seed decides how
distinct the words of the 84 toy captions come out. For each attribute (colour, shape, direction) the script
embeds the 84 captions `[84, 77, D]`, averages the embeddings of the captions that share each value (all
"left" captions, all "right" ones, ...), and prints the smallest distance between two such class means, divided
by the mean norm of a caption's embedding. A pair near 0 is a pair the model can only tell apart through tiny
differences of its conditioning (seed 0: "left" vs "right" 0.063). The last line names the seed whose
smallest distance of `--rank-by` (default: direction) is largest. Hydra overrides after the options pick the
text encoder config (`text_encoder.*` of the composed `conf/train.yaml`).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor

from datamodules.toy_scorer import parse_caption
from datamodules.toy_shapes import COLORS, DIRECTIONS, SHAPES
from modules.evaluation.prompts import toy_prompts

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ATTRIBUTES = {"colour": tuple(COLORS), "shape": SHAPES, "direction": tuple(DIRECTIONS)}


def toy_captions() -> tuple[list[str], list[dict[str, str]]]:
    """The 84 toy captions and, for each, its attribute values (`{"colour": "red", "shape": ..., ...}`)."""
    captions = toy_prompts()
    return captions, [dict(zip(ATTRIBUTES, parse_caption(caption), strict=True)) for caption in captions]


def class_mean_distances(
    embeddings: Tensor, labels: Sequence[dict[str, str]], attribute: str, values: Sequence[str]
) -> dict[tuple[str, str], float]:
    """Distance between the class means of every pair of `values` of `attribute`, over the mean embedding norm.

    Args:
        embeddings: `[N, L, D]` (or `[N, F]`) caption embeddings.
        labels: N mappings attribute -> value, one per caption.
        attribute: which attribute's classes to compare.
        values: the classes; each must occur in `labels`.
    """
    flat = embeddings.flatten(1).double()
    scale = flat.norm(dim=1).mean()
    means = {}
    for value in values:
        rows = [index for index, label in enumerate(labels) if label[attribute] == value]
        if not rows:
            raise ValueError(f"no caption has {attribute}={value!r}")
        means[value] = flat[rows].mean(dim=0)
    return {
        (first, second): float((means[first] - means[second]).norm() / scale)
        for first, second in itertools.combinations(values, 2)
    }


def separation(encoder: torch.nn.Module) -> dict[str, tuple[float, tuple[str, str]]]:
    """Per attribute: the smallest class-mean distance over the toy captions and the pair that has it."""
    captions, labels = toy_captions()
    with torch.no_grad():
        embeddings = encoder(captions)
    result = {}
    for attribute, values in ATTRIBUTES.items():
        distances = class_mean_distances(embeddings, labels, attribute, values)
        pair = min(distances, key=distances.__getitem__)
        result[attribute] = (distances[pair], pair)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(60)), help="init seeds to try")
    parser.add_argument(
        "--rank-by",
        choices=sorted(ATTRIBUTES),
        default="direction",
        help="attribute that picks the best seed",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. experiment=toy_artv"
    )
    args = parser.parse_args(argv)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=args.overrides)
    if cfg.text_encoder.get("weights_path"):
        parser.error(
            f"text_encoder.weights_path={cfg.text_encoder.weights_path}: a loaded tower has no init seed"
        )
    rows = []
    for seed in args.seeds:
        cfg.text_encoder.init_seed = seed
        found = separation(instantiate(cfg.text_encoder))
        rows.append((found[args.rank_by][0], seed))
        cells = "  ".join(
            f"{name} {distance:.3f} ({'/'.join(pair)})" for name, (distance, pair) in found.items()
        )
        print(f"seed {seed}: {cells}", flush=True)
    best = max(rows, key=lambda row: row[0])
    print(
        f"best seed by {args.rank_by}: {best[1]} (smallest {args.rank_by} class-mean distance {best[0]:.3f})"
    )


if __name__ == "__main__":
    main()
