r"""Generate the toy "shapes" shards ahead of time (training does it on first use anyway).

    python scripts/make_toy_data.py --out data/shapes
    python scripts/make_toy_data.py --out /tmp/shapes --train-samples 256 --val-samples 32
    python scripts/make_toy_data.py --out data/shapes_direction_free --num-frames 8 --start direction_free \
        --travel-fraction 0.26 0.30 --train-samples 3072      # the shards of data=shapes_direction_free

The defaults equal conf/data/shapes.yaml's `toy_shards`, so shards made here are the ones `data=shapes`
expects under `${paths.data_dir}/shapes`; the third line makes those conf/data/shapes_direction_free.yaml expects.
"""

import argparse
import logging

from datamodules.toy_shapes import START_MODES, ShapesShardSet


def main(argv: list[str] | None = None) -> None:
    defaults = ShapesShardSet(root=".")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="toy data directory (gets train/ and val/)")
    parser.add_argument("--train-samples", type=int, default=defaults.train_samples)
    parser.add_argument("--val-samples", type=int, default=defaults.val_samples)
    parser.add_argument("--samples-per-shard", type=int, default=defaults.samples_per_shard)
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames)
    parser.add_argument("--size", type=int, default=defaults.size, help="frame height and width in px")
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--start", choices=START_MODES, default=defaults.start, help="where the shape starts")
    parser.add_argument(
        "--travel-fraction",
        type=float,
        nargs=2,
        default=list(defaults.travel_fraction),
        metavar=("LOW", "HIGH"),
        help="path length over the whole video, in frame widths",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ShapesShardSet(
        root=args.out,
        train_samples=args.train_samples,
        val_samples=args.val_samples,
        samples_per_shard=args.samples_per_shard,
        num_frames=args.num_frames,
        size=args.size,
        fps=args.fps,
        seed=args.seed,
        start=args.start,
        travel_fraction=args.travel_fraction,
    ).generate()


if __name__ == "__main__":
    main()
