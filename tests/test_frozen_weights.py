"""Frozen pretrained net weights (SCVideo's `trainable: paper`) stay out of non-sharded checkpoints with their
fingerprint; resuming and sampling rebuild them from `backbone.pretrained` and refuse a file with other values."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import SingleDeviceStrategy
from safetensors.torch import load_file

from modules.checkpoints.frozen_weights import FINGERPRINT_KEY, FrozenWeightsMismatchError
from modules.runtime.config_checks import check_checkpoint_matches
from modules.runtime.sampling import build_model_for_sampling
from modules.training.fsdp import fsdp_strategy
from tests.conftest import compose_config
from tests.helpers.pretrained_files import paper_trainable, write_tiny_sd_unet
from tests.helpers.train_runs import compose_tiny, load_checkpoint, toy_data_dir

EVERY_STEP = [
    "model.lr_scheduler.total_steps=4",  # the schedule must not change where a resumed segment stops
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "trainer.limit_val_batches=0",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny 'SD' UNet files with the same keys and shapes and different values."""
    directory = tmp_path_factory.mktemp("pretrained")
    return {
        name: write_tiny_sd_unet(directory / f"{name}.safetensors", seed)
        for name, seed in (("a", 1), ("b", 2))
    }


def _train(
    tmp_path: Path, data_dir: Path, overrides: list[str], max_steps: int, ckpt_path: Path | None = None
):
    from train import train

    cfg = compose_tiny(tmp_path, data_dir, [*EVERY_STEP, *overrides, f"trainer.max_steps={max_steps}"])
    cfg.ckpt_path = None if ckpt_path is None else str(ckpt_path)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints"


def test_checkpoints_leave_out_the_frozen_pretrained_weights_and_resume_rebuilds_them(
    pretrained, tmp_path, tmp_path_factory
):
    data_dir = toy_data_dir(tmp_path_factory)
    directory = _train(tmp_path, data_dir, paper_trainable(pretrained["a"]), max_steps=2)
    checkpoint = load_checkpoint(directory / "step00000002.ckpt")

    model = instantiate(compose_tiny(tmp_path, data_dir, paper_trainable(pretrained["a"])).model)
    frozen = {f"net.{name}" for name, p in model.net.named_parameters() if not p.requires_grad}
    trainable = {f"net.{name}" for name, _ in model.net.trainable_named_parameters()}
    assert frozen and model.frozen_net_keys == frozen
    state = checkpoint["state_dict"]
    assert not frozen & state.keys() and trainable <= state.keys()
    assert any(key.startswith("ema.") for key in state)
    stored = checkpoint[FINGERPRINT_KEY]
    assert [item["path"] for item in stored["files"]] == [str(pretrained["a"].resolve())]
    assert stored["tensors"] == len(frozen) and stored["sha256"] == model.frozen_fingerprint.sha256

    # sampling's load: strict, the frozen weights those of the file, the trained ones those of the checkpoint
    check_checkpoint_matches(model, str(directory / "step00000002.ckpt"))
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    parameters = dict(model.named_parameters())
    sd_weights = load_file(str(pretrained["a"]))
    for key in frozen:
        assert torch.equal(parameters[key], sd_weights[key.removeprefix("net.unet.")]), key
    for key in trainable:
        assert torch.equal(parameters[key], state[key]), key

    # a resumed run rebuilds them too and trains on
    resumed = _train(tmp_path, data_dir, paper_trainable(pretrained["a"]), 3, directory / "step00000002.ckpt")
    assert load_checkpoint(resumed / "step00000003.ckpt")["global_step"] == 3


def test_resume_and_sampling_refuse_other_frozen_weights(pretrained, tmp_path, tmp_path_factory):
    data_dir = toy_data_dir(tmp_path_factory)
    file = tmp_path / "sd.safetensors"
    file.write_bytes(pretrained["a"].read_bytes())
    checkpoint_path = _train(tmp_path, data_dir, paper_trainable(file), max_steps=1) / "step00000001.ckpt"

    with pytest.raises(FrozenWeightsMismatchError) as refused:
        _train(tmp_path / "other", data_dir, paper_trainable(pretrained["b"]), 2, checkpoint_path)
    message = str(refused.value)
    assert (
        "\n" not in message and f"ckpt_path={checkpoint_path} was trained on the frozen weights of" in message
    )
    assert f"backbone.pretrained now gives {pretrained['b'].resolve()}" in message

    checkpoint = load_checkpoint(checkpoint_path)
    no_pretrained = instantiate(compose_tiny(tmp_path, data_dir, ["model.net.trainable=paper"]).model)
    with pytest.raises(
        FrozenWeightsMismatchError, match=r"loads no pretrained file for them: set backbone.pretrained"
    ):
        no_pretrained.on_load_checkpoint(checkpoint)

    # sampling rebuilds the model from the stored run config, whose pretrained file now holds other values
    cfg = compose_config("sample", [f"ckpt_path={checkpoint_path}"], tmp_path / "sample")
    assert build_model_for_sampling(cfg).frozen_fingerprint.sha256 == checkpoint[FINGERPRINT_KEY]["sha256"]
    file.write_bytes(pretrained["b"].read_bytes())
    with pytest.raises(FrozenWeightsMismatchError, match=r"backbone.pretrained now gives .*sd.safetensors"):
        build_model_for_sampling(cfg)


def test_frozen_weights_stay_in_fsdp_checkpoints_and_without_a_pretrained_file(pretrained, tmp_path):
    paper = compose_config("train", paper_trainable(pretrained["a"]), tmp_path)
    model = instantiate(paper.model)
    blocks = ["modules.blocks.resnet.TimestepEmbedSequential"]
    for strategy, kept in (
        (fsdp_strategy(blocks, state_dict_type="sharded"), True),
        (fsdp_strategy(blocks, state_dict_type="full"), True),  # also loaded strictly by the strategy itself
        (SingleDeviceStrategy("cpu"), False),
    ):
        model.trainer = SimpleNamespace(strategy=strategy)
        checkpoint = {"state_dict": model.state_dict()}
        model.on_save_checkpoint(checkpoint)
        assert all((key in checkpoint["state_dict"]) is kept for key in model.frozen_net_keys)
        assert (FINGERPRINT_KEY in checkpoint) is not kept

    # random frozen weights (no pretrained file) cannot be rebuilt: they stay in
    random_init = instantiate(compose_config("train", ["model.net.trainable=paper"], tmp_path).model)
    assert random_init.frozen_fingerprint is None and not random_init.frozen_net_keys
    random_init.trainer = SimpleNamespace(strategy=SingleDeviceStrategy("cpu"))
    checkpoint = {"state_dict": random_init.state_dict()}
    random_init.on_save_checkpoint(checkpoint)
    frozen = [f"net.{name}" for name, p in random_init.net.named_parameters() if not p.requires_grad]
    assert frozen and all(key in checkpoint["state_dict"] for key in frozen)
    assert FINGERPRINT_KEY not in checkpoint
