"""EMA, LR schedules and condition dropout."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hydra.errors import OverrideParseException
from torch import nn

from modules.training.condition_dropout import drop_conditions
from modules.training.ema import ExponentialMovingAverage
from modules.training.lr_schedules import constant_with_warmup, cosine_with_warmup
from tests.conftest import compose_config


def test_ema_matches_closed_form_without_warmup():
    layer = nn.Linear(3, 2)
    ema = ExponentialMovingAverage(layer.named_parameters(), decay=0.9, use_num_updates=False)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    for _ in range(5):
        ema.update(layer.named_parameters())
    expected = 0.9**5 * start + (1 - 0.9**5) * torch.ones_like(start)
    torch.testing.assert_close(ema.shadows()[0], expected)


def test_ema_warmup_follows_ldm_rule():
    layer = nn.Linear(1, 1)
    ema = ExponentialMovingAverage(layer.named_parameters(), decay=0.9999, use_num_updates=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.update(layer.named_parameters())
    assert ema.current_decay() == pytest.approx(2 / 11)


def test_ema_swap_restores_training_weights_and_covers_only_trainable():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ema = ExponentialMovingAverage(trainable, decay=0.5, use_num_updates=False)
    assert ema.param_names == ["1.weight", "1.bias"]
    with torch.no_grad():
        model[1].weight.add_(1.0)
    ema.update(trainable)
    raw = model[1].weight.detach().clone()
    with ema.swapped_in(trainable):
        torch.testing.assert_close(model[1].weight, ema.shadows()[0])
        assert not torch.equal(model[1].weight, raw)
    torch.testing.assert_close(model[1].weight, raw)


def test_ema_state_dict_round_trip():
    layer = nn.Linear(2, 2)
    ema = ExponentialMovingAverage(layer.named_parameters(), decay=0.99)
    ema.update(layer.named_parameters())
    other = ExponentialMovingAverage(nn.Linear(2, 2).named_parameters(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert int(other.num_updates) == 1
    for a, b in zip(ema.shadows(), other.shadows(), strict=True):
        torch.testing.assert_close(a, b)


def _lrs(scheduler_factory, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = scheduler_factory(optimizer)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_cosine_with_warmup_shape():
    lrs = _lrs(lambda opt: cosine_with_warmup(opt, warmup_steps=10, total_steps=110), 111)
    assert lrs[0] == pytest.approx(2.0 / 10)
    assert lrs[9] == pytest.approx(2.0)
    assert lrs[10] == pytest.approx(2.0)
    assert lrs[60] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_constant_with_warmup_and_bad_arguments():
    lrs = _lrs(lambda opt: constant_with_warmup(opt, warmup_steps=4), 8)
    assert lrs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="total_steps"):
        cosine_with_warmup(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 20, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        constant_with_warmup(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), -1)


def test_condition_dropout_is_independent_per_key_and_sample():
    batch = 4000
    cond = {
        "text": torch.ones(batch, 3, 2),
        "reference": torch.ones(batch, 8, 2, 2),
        "anchor": torch.ones(batch, 4),
    }
    null = {
        "text": torch.full((1, 3, 2), -1.0),
        "reference": torch.zeros(1, 8, 2, 2),
        "anchor": torch.zeros(1, 4),
    }
    generator = torch.Generator().manual_seed(0)
    out = drop_conditions(cond, null, {"text": 0.1, "reference": 0.3}, generator)
    text_dropped = (out["text"][:, 0, 0] == -1).float()
    ref_dropped = (out["reference"][:, 0, 0, 0] == 0).float()
    assert text_dropped.mean().item() == pytest.approx(0.1, abs=0.02)
    assert ref_dropped.mean().item() == pytest.approx(0.3, abs=0.03)
    both = (text_dropped * ref_dropped).mean().item()
    assert both == pytest.approx(0.03, abs=0.01)
    assert torch.equal(out["anchor"], cond["anchor"])
    # a dropped sample is replaced whole, a kept one untouched
    rows = out["text"].flatten(1)
    assert bool(((rows == -1).all(1) | (rows == 1).all(1)).all())


def test_condition_dropout_rejects_unknown_key():
    with pytest.raises(KeyError, match="condition_dropout"):
        drop_conditions({"text": torch.ones(1, 1)}, {"text": torch.zeros(1, 1)}, {"anchor": 0.5})


def test_condition_dropout_group_drops_its_members_together():
    batch = 4000
    cond = {"text": torch.ones(batch, 2), "reference": torch.ones(batch, 3), "anchor": torch.ones(batch, 4)}
    null = {"text": torch.zeros(1, 2), "reference": torch.zeros(1, 3), "anchor": torch.zeros(1, 4)}
    generator = torch.Generator().manual_seed(0)
    out = drop_conditions(cond, null, {"reference": 0.1, "anchor": 0.1, "reference+anchor": 0.3}, generator)
    ref_dropped = out["reference"][:, 0] == 0
    anchor_dropped = out["anchor"][:, 0] == 0
    # both null: the group's 0.3 plus the independent 0.1 x 0.1 of the remaining 0.7
    assert (ref_dropped & anchor_dropped).float().mean().item() == pytest.approx(0.307, abs=0.025)
    # each alone: 1 - 0.9 x 0.7 = 0.37
    assert ref_dropped.float().mean().item() == pytest.approx(0.37, abs=0.025)
    assert anchor_dropped.float().mean().item() == pytest.approx(0.37, abs=0.025)
    assert torch.equal(out["text"], cond["text"])


def test_a_group_entry_is_set_from_the_command_line_by_merging_a_mapping(tmp_path):
    # the override form conf/model/artv.yaml documents: a dotted key with "+" is not in Hydra's grammar
    cfg = compose_config(
        "train", ["model=artv", "++model.condition_dropout={reference+anchor:0.3}"], tmp_path
    )
    assert dict(cfg.model.condition_dropout) == {
        "reference": 0.1,
        "anchor": 0.1,
        "text": 0.1,
        "reference+anchor": 0.3,
    }
    toy = compose_config(
        "train", ["experiment=toy_artv", "model.condition_dropout={reference+anchor:0.45}"], tmp_path
    )
    assert toy.model.condition_dropout["reference+anchor"] == 0.45
    with pytest.raises(OverrideParseException):
        compose_config(
            "train", ["experiment=toy_artv", "model.condition_dropout.reference+anchor=0.45"], tmp_path
        )


@pytest.mark.parametrize("entry", ["reference+", "text+text", "+anchor"])
def test_condition_dropout_rejects_malformed_group(entry):
    cond = {"text": torch.ones(1, 1), "reference": torch.ones(1, 1), "anchor": torch.ones(1, 1)}
    with pytest.raises(ValueError, match="condition_dropout"):
        drop_conditions(cond, cond, {entry: 0.5})


def test_condition_dropout_rejects_unknown_group_member():
    cond = {"text": torch.ones(1, 1), "reference": torch.ones(1, 1)}
    with pytest.raises(KeyError, match=r"\['anchor'\]"):
        drop_conditions(cond, cond, {"reference+anchor": 0.5})
