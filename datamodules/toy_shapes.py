"""Toy data set "shapes": one coloured shape moving in a straight line on a black background.

Captions read "a red circle moving left". Colours (`COLORS`) are seven well separated RGB primaries
and secondaries plus white; shapes are circle, square and triangle; directions left, right, up, down.
Sample `i` of a split takes colour `i % 7`, shape `(i // 7) % 3` and direction `(i // 21) % 4`, so
every 84 consecutive samples hold each combination once; size, position and speed come from a
generator seeded by `(seed, split, i)`. Everything is deterministic given the seed.

Default videos are 64 x 64 px, 24 frames at 8 fps. The shape travels 55-68 % of the frame width over
the video (`travel_fraction`; about 1.5-1.9 px per frame at 64 px), so over 8 frames at stride 1 resized
to 32 x 32 it moves 5-7 px, and twice that at stride 2: enough for the direction to be obvious.

Where the shape starts (`start`):
- `"path_end"` (default): at the far end of its path, so that the long path fits in the frame. The
  position then tells the direction: a shape near the left edge can only be moving right.
- `"direction_free"`: drawn from the same range whatever the direction (the middle of the frame along the
  motion axis, `travel` away from either end), so no frame-0 position predicts the direction and only the
  caption does. The path must fit twice over, so use it with a short `travel_fraction` (short videos).

`ShapesShardSet.generate()` writes the train and validation splits as mp4 shards through the same
writer as real data (`shard_writer.write_shard_set`), once: it records its settings in
`ROOT/shapes_settings.json` and refuses to mix shards made with other settings.
"""

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.mp4_encoding import encode_mp4
from datamodules.shard_writer import ShardSample, write_shard_set

log = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
# unit displacement per direction in image coordinates (x right, y down)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_SUPERSAMPLING = 4
_SPLITS = {"train": 0, "val": 1}
START_MODES = ("path_end", "direction_free")
DEFAULT_TRAVEL_FRACTION = (0.55, 0.68)
# settings that shards made before an option existed were made with (their settings file lacks the key)
_SETTINGS_BEFORE_START_OPTION = {
    "start": "path_end",
    "travel_fraction": list(DEFAULT_TRAVEL_FRACTION),
    "colors": list(COLORS),
    "shapes": list(SHAPES),
}


def toy_caption(color: str, shape: str, direction: str) -> str:
    """`"a red circle moving left"`."""
    return f"a {color} {shape} moving {direction}"


@dataclass(frozen=True)
class ToyVideoSpec:
    """One toy video: what moves where. Positions are shape centres in pixels of a `size x size` frame."""

    color: str
    shape: str
    direction: str
    radius: float
    start_x: float
    start_y: float
    travel: float

    @property
    def caption(self) -> str:
        return toy_caption(self.color, self.shape, self.direction)


def check_toy_vocabulary(colors: Sequence[str], shapes: Sequence[str]) -> None:
    """Raise a ValueError naming the bad setting (`toy_shards.colors` / `toy_shards.shapes`)."""
    for key, chosen, known in (("colors", colors, list(COLORS)), ("shapes", shapes, list(SHAPES))):
        unknown = [name for name in chosen if name not in known]
        if not chosen or unknown or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"toy_shards.{key} must be a non-empty list of distinct names from {known}, got {list(chosen)}"
            )


def check_toy_geometry(start: str, travel_fraction: tuple[float, float]) -> None:
    """Raise a ValueError naming the bad setting (`toy_shards.start` / `toy_shards.travel_fraction`)."""
    if start not in START_MODES:
        raise ValueError(f"toy_shards.start must be one of {START_MODES}, got {start!r}")
    low, high = travel_fraction
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(
            f"toy_shards.travel_fraction must be [low, high] with 0 < low <= high <= 1, got {list(travel_fraction)}"
        )


def toy_video_spec(
    index: int,
    rng: np.random.Generator,
    size: int,
    start: str = "path_end",
    travel_fraction: tuple[float, float] = DEFAULT_TRAVEL_FRACTION,
    colors: Sequence[str] = tuple(COLORS),
    shapes: Sequence[str] = SHAPES,
) -> ToyVideoSpec:
    """The spec of sample `index`: its combination by index, its geometry drawn from `rng`.

    `travel_fraction`: range of the path length over the whole video, in frame widths; `start`: see the module
    docstring; `colors`, `shapes`: the vocabulary drawn from (a subset makes a smaller task, e.g. the demo's).
    The defaults reproduce the data sets made before these options existed, draw for draw.
    """
    check_toy_geometry(start, travel_fraction)
    color = colors[index % len(colors)]
    shape = shapes[(index // len(colors)) % len(shapes)]
    direction = list(DIRECTIONS)[(index // (len(colors) * len(shapes))) % len(DIRECTIONS)]
    radius = size * rng.uniform(0.11, 0.14)
    extent = 1.3 * radius  # the triangle reaches 1.3 r from its centre (`_shape_mask`)
    low, high = extent + 1.0, size - extent - 1.0
    step_x, step_y = DIRECTIONS[direction]
    if start == "path_end":
        travel = min(size * rng.uniform(*travel_fraction), high - low)
        along = low + rng.uniform(0.0, max(0.0, high - low - travel))
        # a shape moving left/up starts at the far end of its path
        start_along = along + travel if step_x + step_y < 0 else along
    else:
        # the same start range for both senses: a path of `travel` fits from there either way
        travel = min(size * rng.uniform(*travel_fraction), (high - low) / 2)
        start_along = rng.uniform(low + travel, high - travel)
    across = rng.uniform(low, high)
    start_x, start_y = (start_along, across) if step_x else (across, start_along)
    return ToyVideoSpec(color, shape, direction, radius, start_x, start_y, travel)


def render_toy_video(spec: ToyVideoSpec, size: int, num_frames: int) -> np.ndarray:
    """Frames of `spec`, uint8 RGB `[T, size, size, 3]`, anti-aliased by supersampling."""
    step_x, step_y = DIRECTIONS[spec.direction]
    sub = (np.arange(size * _SUPERSAMPLING) + 0.5) / _SUPERSAMPLING
    grid_y, grid_x = np.meshgrid(sub, sub, indexing="ij")
    color = np.asarray(COLORS[spec.color], dtype=np.float32)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for frame_index in range(num_frames):
        progress = frame_index / max(1, num_frames - 1)
        center_x = spec.start_x + step_x * spec.travel * progress
        center_y = spec.start_y + step_y * spec.travel * progress
        inside = _shape_mask(spec.shape, grid_x - center_x, grid_y - center_y, spec.radius)
        coverage = inside.reshape(size, _SUPERSAMPLING, size, _SUPERSAMPLING).mean(axis=(1, 3))
        frames[frame_index] = np.rint(coverage[..., None] * color).astype(np.uint8)
    return frames


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape centred at the origin; sizes chosen for similar areas."""
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half = 0.886 * radius  # same area as the circle: (2 * 0.886 r)^2 = pi r^2
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # apex up, base down; 1.3 r tall above the centre and below it, 1.3 r half-width at the base
        top, bottom = -1.3 * radius, 1.3 * radius
        half_width = 1.3 * radius * (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown toy shape {shape!r}; expected one of {SHAPES}")


def toy_sample_factory(
    seed: int,
    split: str,
    size: int,
    num_frames: int,
    fps: float,
    start: str = "path_end",
    travel_fraction: tuple[float, float] = DEFAULT_TRAVEL_FRACTION,
    colors: Sequence[str] = tuple(COLORS),
    shapes: Sequence[str] = SHAPES,
) -> Callable[[int, str], ShardSample]:
    """`(index, key) -> ShardSample` making toy video `index` of `split` as an H.264 mp4."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLITS)}")

    def make_sample(index: int, key: str) -> ShardSample:
        rng = np.random.default_rng([seed, _SPLITS[split], index])
        spec = toy_video_spec(index, rng, size, start, travel_fraction, colors, shapes)
        video = encode_mp4(render_toy_video(spec, size, num_frames), fps)
        metadata = {
            **asdict(spec),
            "split": split,
            "index": index,
            "seed": seed,
            "fps": fps,
            "num_frames": num_frames,
            "width": size,
            "height": size,
        }
        return ShardSample(key=key, video=video, caption=spec.caption, metadata=metadata)

    return make_sample


class ShapesShardSet:
    """The toy shard directories `ROOT/train` and `ROOT/val`, generated on demand.

    Args:
        root: directory of the toy data set.
        train_samples, val_samples: videos per split.
        samples_per_shard: videos per tar shard.
        num_frames: frames per video.
        size: frame height and width in pixels (even).
        fps: frame rate of the videos.
        seed: generation seed (independent of the training seed, so that runs share one data set).
        start: where the shape starts, "path_end" or "direction_free" (module docstring).
        travel_fraction: [low, high] range of the path length over the video, in frame widths.
        colors, shapes: the vocabulary of the captions (None: all of `COLORS` / `SHAPES`).
    """

    def __init__(
        self,
        root: str,
        train_samples: int = 1024,
        val_samples: int = 64,
        samples_per_shard: int = 128,
        num_frames: int = 24,
        size: int = 64,
        fps: float = 8.0,
        seed: int = 1234,
        start: str = "path_end",
        travel_fraction: Sequence[float] = DEFAULT_TRAVEL_FRACTION,
        colors: Sequence[str] | None = None,
        shapes: Sequence[str] | None = None,
    ) -> None:
        if len(travel_fraction) != 2:
            raise ValueError(f"toy_shards.travel_fraction must be [low, high], got {list(travel_fraction)}")
        fraction = (float(travel_fraction[0]), float(travel_fraction[1]))
        self.colors = tuple(COLORS) if colors is None else tuple(colors)
        self.shapes = SHAPES if shapes is None else tuple(shapes)
        check_toy_geometry(start, fraction)  # at construction, before any shard is written
        check_toy_vocabulary(self.colors, self.shapes)
        self.root = Path(root)
        self.train_samples = train_samples
        self.val_samples = val_samples
        self.samples_per_shard = samples_per_shard
        self.num_frames = num_frames
        self.size = size
        self.fps = fps
        self.seed = seed
        self.start = start
        self.travel_fraction = fraction

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def val_dir(self) -> Path:
        return self.root / "val"

    def settings(self) -> dict[str, Any]:
        """Everything that determines the shards' content."""
        return {
            "train_samples": self.train_samples,
            "val_samples": self.val_samples,
            "samples_per_shard": self.samples_per_shard,
            "num_frames": self.num_frames,
            "size": self.size,
            "fps": float(self.fps),
            "seed": self.seed,
            "start": self.start,
            "travel_fraction": list(self.travel_fraction),
            "colors": list(self.colors),
            "shapes": list(self.shapes),
        }

    def generate(self) -> None:
        """Write whatever shards are missing (all of them the first time); a no-op when complete.

        Raises:
            ValueError: `root` holds toy shards generated with other settings.
        """
        settings_path = self.root / "shapes_settings.json"
        if settings_path.exists():
            # shards made before `start` / `travel_fraction` existed used today's defaults
            recorded = {**_SETTINGS_BEFORE_START_OPTION, **json.loads(settings_path.read_text())}
            if recorded != self.settings():
                raise ValueError(
                    f"{self.root} holds toy shards generated with {recorded}, not {self.settings()}; "
                    "delete that directory or point paths.data_dir elsewhere"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            partial = settings_path.with_suffix(".json.partial")
            partial.write_text(json.dumps(self.settings(), indent=2, sort_keys=True))
            partial.replace(settings_path)
        for split, count, directory in (
            ("train", self.train_samples, self.train_dir),
            ("val", self.val_samples, self.val_dir),
        ):
            make_sample = toy_sample_factory(
                self.seed,
                split,
                self.size,
                self.num_frames,
                self.fps,
                self.start,
                self.travel_fraction,
                self.colors,
                self.shapes,
            )
            report = write_shard_set(
                directory, count, self.samples_per_shard, make_sample, description=f"toy shapes ({split})"
            )
            if report.shards_written:
                log.info("wrote %d toy %s shards to %s", report.shards_written, split, directory)
