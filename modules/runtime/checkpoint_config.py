"""Self-describing checkpoints: sample.py and eval.py take the model and its sampling defaults from the checkpoint.

A training checkpoint stores the fully composed, resolved training config (`checkpoint["run_config"]`, set by
train.py and written by VideoDiffusionModule.on_save_checkpoint). With a checkpoint, the keys below of the sampling
config are replaced by the stored ones before anything else reads them (`apply_checkpoint_config`, called first in
the entry points' `main()`):

| sampling config key                      | restored from the run config           | a command-line override of it  |
| ---------------------------------------- | -------------------------------------- | ------------------------------ |
| model, backbone, text_encoder, schedule  | the same keys                          | checked, never applied         |
| sampler, guidance, resolution            | the same keys                          | wins                           |
| num_frames, fps (sample.py)              | data.num_frames, data.target_fps (set) | wins                           |

Everything else (prompts, seeds, data, eval_protocol, inference_precision, paths, ...) is the sampling config's own. The
restored `model.sampler` and `model.guidance` point at the restored `sampler` and `guidance`, so the sampling
overrides reach the model (`sampler=dpmpp_2m`, `sampler.num_steps=20`, `guidance.scale=7.5`), and resolution and
frame count may change at sampling. Hydra composes the command line against the sampling config's own defaults
first, so a key only the checkpoint's config has needs `++`: `++guidance.weights.text=5` for an ART-V checkpoint
(sample.yaml's default guidance, `cfg`, has no `weights`).

Checked overrides. The weights fix model, backbone, text encoder and schedule, so an override of them must agree
with the checkpoint and then changes nothing:
- a dotted key (`backbone.unet.model_channels=64`, `text_encoder.init_seed=3`, `backbone.pretrained=...`) must equal
  the stored value;
- a group (`model=scvideo`, `backbone=sd14`, `text_encoder=tiny`) must compose to the stored values, compared on the
  keys that define the weights: not the module's training-only and sampling arguments (`TRAINING_AND_SAMPLING_KEYS`),
  not keys linked from another group (`${backbone.unet}`, checked when that group is overridden), not weight file
  paths (`FILE_KEY_NAMES`), and not the keys a `from_scratch` option sets (they depend on the model/backbone pair,
  which the command line need not repeat);
- `experiment=...` (a `_global_` group) counts as a group override of every restored key.
A contradiction fails before any weights load, in one line naming the override, the key, the checkpoint and what it
was trained with.

Which checkpoint. `ckpt_path=latest` is the newest complete checkpoint under `paths.log_dir/train` of the model the
command line asks for (`model=` or `experiment=`, compared by `model.net._target_`), or of any model when it names
none; `ckpt_path` is then set to the file found. `ckpt_path=null` samples with the weights the config names and
restores nothing; so does a checkpoint without a stored run config (with a warning).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from modules.checkpoints.sharded import load_run_config
from modules.runtime.config_checks import ConfigError
from modules.runtime.sampling import GENERATION_ONLY_SAMPLER_KEYS, resolve_sampling_checkpoint

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CHECKED_KEYS = ("model", "backbone", "text_encoder", "schedule")  # fixed by the weights
# the checkpoint's by default; the command line's when it sets them
FREE_KEYS = ("sampler", "guidance", "resolution")
FROM_DATA = {"num_frames": "data.num_frames", "fps": "data.target_fps"}  # sampling key -> run config key
# VideoDiffusionModule arguments that do not define the weights: training-only, or how sampling runs
TRAINING_AND_SAMPLING_KEYS = (
    "model.optimizer",
    "model.lr_scheduler",
    "model.condition_dropout",
    "model.ema_decay",
    "model.ema_use_num_updates",
    "model.min_snr_gamma",
    "model.objective",
    "model.high_noise_fraction",
    "model.high_noise_from",
    "model.first_frame_lead_fraction",
    "model.max_consecutive_nonfinite",
    "model.vae_chunk_frames",
    "model.sampler",
    "model.guidance",
)
FILE_KEY_NAMES = ("pretrained", "weights_path")  # weight files, whose paths differ between machines
UNSET = "<unset>"


@dataclass(frozen=True)
class CommandLineKey:
    """One restored key that a command-line override sets: `key` (`model`, `sampler.num_steps`), whether it is set
    by choosing a config group (`model=artv`, or `experiment=...` for every restored key), and the override as typed."""

    key: str
    is_group: bool
    override: str

    @property
    def root(self) -> str:
        return self.key.split(".", 1)[0]


def restored_keys_set_by(overrides: Sequence[str], groups: Iterable[str]) -> list[CommandLineKey]:
    """The restored keys that `overrides` (Hydra's command-line overrides) set. `groups` are the config groups of
    the primary config; an option of a `_global_` group (experiment, from_scratch) sets every restored group."""
    groups = set(groups)
    restored = (*CHECKED_KEYS, *FREE_KEYS, *FROM_DATA)
    found: list[CommandLineKey] = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        name = override.key_or_group
        is_group = name in groups
        keys = (*CHECKED_KEYS, *FREE_KEYS) if is_group and _is_global(name, override.value()) else (name,)
        found += [
            CommandLineKey(key, is_group, override.input_line) for key in keys if _root(key) in restored
        ]
    return found


def apply_checkpoint_config(cfg: DictConfig) -> DictConfig:
    """The entry points' hook: `cfg` with the checkpoint's model and sampling defaults, the command line's
    overrides (read from Hydra) checked against them; see the module docstring."""
    hydra = HydraConfig.get()
    return checkpoint_config(cfg, list(hydra.overrides.task), hydra.runtime.choices.keys())


def checkpoint_config(cfg: DictConfig, overrides: Sequence[str], groups: Iterable[str]) -> DictConfig:
    """`cfg` (composed with `overrides`, whose config groups are `groups`) with `ckpt_path` resolved and the keys of
    the module docstring restored from the checkpoint's run config. Raises ConfigError for an override that
    contradicts the checkpoint."""
    command_line = restored_keys_set_by(overrides, groups)
    model_asked = any(item.root == "model" and item.is_group for item in command_line)
    net_target = OmegaConf.select(cfg, "model.net._target_") if model_asked else None
    checkpoint = resolve_sampling_checkpoint(cfg.get("ckpt_path"), cfg.paths.log_dir, net_target)
    restored = copy.deepcopy(cfg)
    restored.ckpt_path = None if checkpoint is None else str(checkpoint)
    if checkpoint is None:
        return restored
    stored = load_run_config(checkpoint)
    if stored is None:
        log.warning(
            "%s stores no run config: model, backbone and sampling settings come from this config <ckpt_path>",
            checkpoint,
        )
        return restored
    for item in command_line:
        if item.root in CHECKED_KEYS:
            _check_override(cfg, stored, item, checkpoint)
    current = OmegaConf.to_container(cfg, resolve=False)
    values = {
        root: copy.deepcopy(stored[root]) for root in CHECKED_KEYS if root in stored and root in current
    }
    for root in FREE_KEYS:
        if root in stored and root in current:
            values[root] = _free_node(root, current[root], stored[root], command_line)
    set_on_command_line = {item.key for item in command_line}
    for key, data_key in FROM_DATA.items():
        value = _get_path(stored, data_key.split("."))
        if key in current and key not in set_on_command_line and value not in (None, UNSET):
            values[key] = value
    if "model" in values:  # the model samples with the restored (or overridden) sampler and guidance
        values["model"].update(sampler="${sampler}", guidance="${guidance}")
    for key, value in values.items():
        OmegaConf.update(restored, key, value, merge=False, force_add=True)
    log.info(
        "model, backbone, text encoder, resolution and sampling defaults from %s's run config (net %s); "
        "command-line overrides: %s <ckpt_path>",
        checkpoint,
        stored.get("model", {}).get("net", {}).get("_target_", "?"),
        sorted({item.override for item in command_line}) or "none",
    )
    return restored


def _free_node(root: str, current: Any, stored: Any, command_line: list[CommandLineKey]) -> Any:
    """The `root` node (sampler, guidance or resolution): the command line's group choice, else the stored node with
    the command line's dotted keys and the sampling config's generation-only sampler keys (`sampler.init_noise`)
    taken from `current`, the composed sampling config."""
    if any(item.is_group for item in command_line if item.root == root):
        return current
    node = copy.deepcopy(stored)
    keys = [item.key for item in command_line if item.root == root]
    if root == "sampler":
        keys += [f"sampler.{key}" for key in GENERATION_ONLY_SAMPLER_KEYS]
    for key in keys:
        parts = key.split(".")[1:]
        if parts:
            _set_path(node, parts, _get_path(current, parts))
    return node


def _check_override(cfg: DictConfig, stored: dict[str, Any], item: CommandLineKey, checkpoint: Path) -> None:
    """Raise ConfigError when the command-line key `item` of a weight-defining group disagrees with `stored`."""
    if _under(item.key, TRAINING_AND_SAMPLING_KEYS):
        return
    if item.is_group:
        given = _leaves(_resolved(cfg, item.root), item.root)
        trained = _leaves(stored.get(item.root, UNSET), item.root)
        skipped = _linked_keys(cfg, item.root) | _from_scratch_keys()
        differing = [
            key
            for key in set(given) | set(trained)
            if not _under(key, (*TRAINING_AND_SAMPLING_KEYS, *skipped))
            and key.rsplit(".", 1)[-1] not in FILE_KEY_NAMES
            and given.get(key, UNSET) != trained.get(key, UNSET)
        ]
        if not differing:
            return
        # the class first: `model.net._target_` says more than the first of its arguments
        key = min(differing, key=lambda k: (not k.endswith("_target_"), k.count("."), k))
        given_value, trained_value = given.get(key, UNSET), trained.get(key, UNSET)
    else:
        key = item.key
        given_value = _resolved(cfg, key)
        trained_value = _get_path(stored, key.split("."))
        if given_value == trained_value:
            return
    raise ConfigError(
        f"{item.override} contradicts ckpt_path={checkpoint}: it gives {key}={given_value!r}, but the checkpoint was "
        f"trained with {key}={trained_value!r}; drop {item.override} (the checkpoint's run config sets "
        f"{item.root}) or pass another ckpt_path <{item.root}>"
    )


def _is_global(group: str, option: Any) -> bool:
    """Whether the option file `conf/<group>/<option>.yaml` places its keys at the top (`# @package _global_`)."""
    path = CONF_DIR / group / f"{option}.yaml"
    return path.is_file() and path.read_text().startswith("# @package _global_")


def _resolved(cfg: DictConfig, key: str) -> Any:
    """The value of `key` in `cfg`, interpolations resolved, as plain containers; UNSET when absent."""
    value = OmegaConf.select(cfg, key, default=UNSET)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _linked_keys(cfg: DictConfig, root: str) -> set[str]:
    """The keys under `root` whose value interpolates another key (`model.net.unet: ${backbone.unet}`)."""
    raw = _leaves(OmegaConf.to_container(cfg, resolve=False).get(root), root)
    return {key for key, value in raw.items() if isinstance(value, str) and "${" in value}


@functools.cache
def _from_scratch_keys() -> frozenset[str]:
    """Every key that a `from_scratch` option (conf/from_scratch/) sets."""
    keys: set[str] = set()
    for path in sorted((CONF_DIR / "from_scratch").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        node.pop("defaults", None)
        keys |= set(_leaves(node, ""))
    return frozenset(keys)


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """A nested dict as {dotted key: leaf}; lists and empty dicts are leaves."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    leaves: dict[str, Any] = {}
    for key, child in node.items():
        leaves |= _leaves(child, f"{prefix}.{key}" if prefix else str(key))
    return leaves


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _root(key: str) -> str:
    return key.split(".", 1)[0]


def _get_path(node: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return UNSET
        node = node[part]
    return node


def _set_path(node: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set `value` at `parts` under `node`, creating dicts on the way; UNSET deletes the key."""
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is UNSET:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
