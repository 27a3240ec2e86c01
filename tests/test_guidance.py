"""Guidance objects: one batched forward, the CFG and ART-V eq. (1) formulas, null broadcasting, errors."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from modules.diffusion.guidance import (
    ClassifierFreeGuidance,
    MultiConditionGuidance,
    NoGuidance,
    PreparedGuidance,
    stack_variants,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
BATCH = 3


class CountingEpsModel:
    """A deterministic eps model that depends non-linearly (and jointly) on every condition; counts calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, dict[str, Tensor]]] = []

    def __call__(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        self.calls.append((x_t, t, cond))
        text = cond["text"].pow(2).sum(-1).reshape(-1, 1, 1)
        reference = cond["reference"].sum((1, 2)).reshape(-1, 1, 1)
        anchor = cond["anchor"].mean(-1).reshape(-1, 1, 1)
        step = t.double().reshape(-1, 1, 1) / 1000
        return (
            torch.tanh(x_t) * (1 + text)
            + torch.sin(reference) * x_t**2
            + torch.exp(anchor) * torch.cos(x_t + step)
            + text * anchor * reference * x_t
        )


def make_inputs() -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    x_t = randn(BATCH, 2, 5)
    t = torch.tensor([10, 500, 990])
    cond = {"text": randn(BATCH, 3), "reference": randn(BATCH, 2, 2), "anchor": randn(BATCH, 4)}
    null_cond = {"text": randn(1, 3), "reference": torch.zeros(1, 2, 2), "anchor": torch.zeros(BATCH, 4)}
    return x_t, t, cond, null_cond


def replaced(cond: dict[str, Tensor], null_cond: dict[str, Tensor], *keys: str) -> dict[str, Tensor]:
    out = dict(cond)
    for key in keys:
        out[key] = null_cond[key].expand_as(cond[key])
    return out


def test_no_guidance_is_one_conditional_forward():
    x_t, t, cond, null_cond = make_inputs()
    model = CountingEpsModel()
    eps = NoGuidance()(model, x_t, t, cond, null_cond)
    assert len(model.calls) == 1
    assert torch.equal(eps, CountingEpsModel()(x_t, t, cond))


def test_cfg_one_batched_forward_and_ldm_formula():
    x_t, t, cond, null_cond = make_inputs()
    text_null = {"text": null_cond["text"]}
    model = CountingEpsModel()
    eps = ClassifierFreeGuidance(scale=7.5)(model, x_t, t, cond, text_null)

    assert len(model.calls) == 1
    x_in, t_in, cond_in = model.calls[0]
    assert x_in.shape[0] == 2 * BATCH
    assert torch.equal(t_in, torch.cat([t, t]))
    # ldm row order [unconditional, conditional]; only the keys in null_cond are dropped
    assert torch.equal(cond_in["text"][:BATCH], null_cond["text"].expand(BATCH, 3))
    assert torch.equal(cond_in["reference"], torch.cat([cond["reference"]] * 2))

    reference = CountingEpsModel()
    conditional = reference(x_t, t, cond)
    unconditional = reference(x_t, t, replaced(cond, null_cond, "text"))
    assert torch.allclose(eps, unconditional + 7.5 * (conditional - unconditional), atol=1e-12)


def test_cfg_scale_one_is_the_conditional_prediction_in_one_small_forward():
    x_t, t, cond, null_cond = make_inputs()
    model = CountingEpsModel()
    eps = ClassifierFreeGuidance(scale=1.0)(model, x_t, t, cond, null_cond)
    assert len(model.calls) == 1
    assert model.calls[0][0].shape[0] == BATCH
    assert torch.equal(eps, CountingEpsModel()(x_t, t, cond))


def test_artv_eq1_equals_four_separate_evaluations():
    x_t, t, cond, null_cond = make_inputs()
    weights = {"reference": 0.25, "anchor": 0.25, "text": 6.5}
    model = CountingEpsModel()
    eps = MultiConditionGuidance(weights)(model, x_t, t, cond, null_cond)
    assert len(model.calls) == 1
    assert model.calls[0][0].shape[0] == 4 * BATCH

    reference = CountingEpsModel()
    full = reference(x_t, t, cond)
    no_reference = reference(x_t, t, replaced(cond, null_cond, "reference"))
    no_anchor = reference(x_t, t, replaced(cond, null_cond, "anchor"))
    no_text = reference(x_t, t, replaced(cond, null_cond, "text"))
    expected = full + 0.25 * (full - no_reference) + 0.25 * (full - no_anchor) + 6.5 * (full - no_text)
    assert torch.allclose(eps, expected, atol=1e-12)
    assert not torch.allclose(eps, full)


def test_eq1_with_one_term_equals_cfg_with_scale_plus_one():
    x_t, t, cond, null_cond = make_inputs()
    text_null = {"text": null_cond["text"]}
    multi = MultiConditionGuidance({"text": 6.5})(CountingEpsModel(), x_t, t, cond, text_null)
    cfg = ClassifierFreeGuidance(7.5)(CountingEpsModel(), x_t, t, cond, text_null)
    assert torch.allclose(multi, cfg, atol=1e-12)


def test_zero_weight_removes_its_term_and_forward():
    x_t, t, cond, null_cond = make_inputs()
    model = CountingEpsModel()
    eps = MultiConditionGuidance({"reference": 0.0, "text": 6.5})(model, x_t, t, cond, null_cond)
    assert model.calls[0][0].shape[0] == 2 * BATCH
    only_text = MultiConditionGuidance({"text": 6.5})(CountingEpsModel(), x_t, t, cond, null_cond)
    assert torch.equal(eps, only_text)


def test_null_batch_one_broadcasts_like_batch_b():
    x_t, t, cond, null_cond = make_inputs()
    weights = {"reference": 0.5, "text": 3.0}
    expanded = {key: value.expand(BATCH, *value.shape[1:]).clone() for key, value in null_cond.items()}
    guidance = MultiConditionGuidance(weights)
    assert torch.equal(
        guidance(CountingEpsModel(), x_t, t, cond, null_cond),
        guidance(CountingEpsModel(), x_t, t, cond, expanded),
    )


def test_missing_null_for_weighted_condition_is_a_clear_error():
    x_t, t, cond, null_cond = make_inputs()
    del null_cond["anchor"]
    with pytest.raises(ValueError, match="'anchor' is dropped but null_cond has no value"):
        MultiConditionGuidance({"anchor": 0.25, "text": 6.5})(CountingEpsModel(), x_t, t, cond, null_cond)
    with pytest.raises(ValueError, match="null_cond is empty"):
        ClassifierFreeGuidance(10.0)(CountingEpsModel(), x_t, t, cond, None)


def test_inconsistent_inputs_are_clear_errors():
    x_t, t, cond, null_cond = make_inputs()
    with pytest.raises(ValueError, match="weights name conditions \\['depth'\\]"):
        MultiConditionGuidance({"depth": 1.0})(CountingEpsModel(), x_t, t, cond, null_cond)
    with pytest.raises(ValueError, match="null_cond has keys \\['depth'\\]"):
        ClassifierFreeGuidance(10.0)(CountingEpsModel(), x_t, t, cond, {**null_cond, "depth": torch.zeros(1)})
    with pytest.raises(ValueError, match="null_cond\\['text'\\] has shape \\[2, 3\\]"):
        ClassifierFreeGuidance(10.0)(CountingEpsModel(), x_t, t, cond, {"text": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="cond\\['text'\\] must have batch size B = 3"):
        NoGuidance()(CountingEpsModel(), x_t, t, {**cond, "text": cond["text"][:1]}, None)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cfg", "ClassifierFreeGuidance(scale=10.0)"),
        ("artv_eq1", "MultiConditionGuidance(weights={'reference': 0.25, 'anchor': 0.25, 'text': 6.5})"),
        ("none", "NoGuidance()"),
    ],
)
def test_guidance_configs_instantiate(name: str, expected: str):
    guidance = instantiate(OmegaConf.load(CONF / "guidance" / f"{name}.yaml"))
    assert repr(guidance) == expected


@pytest.mark.parametrize(
    ("guidance", "dropped", "full_rows"),
    [
        (NoGuidance(), [()], slice(0, BATCH)),
        (ClassifierFreeGuidance(7.5), [("text",), ()], slice(BATCH, 2 * BATCH)),
        (ClassifierFreeGuidance(1.0), [()], slice(0, BATCH)),
        (
            MultiConditionGuidance({"reference": 0.25, "anchor": 0.0, "text": 6.5}),
            [(), ("reference",), ("text",)],
            slice(0, BATCH),
        ),
    ],
    ids=["none", "cfg", "cfg_scale_one", "eq1"],
)
def test_guidance_declares_its_variants_and_the_rows_of_the_full_condition(guidance, dropped, full_rows):
    """What a caller reads from the batched forward (e.g. ART-V's masks) without comparing conditions."""
    x_t, t, cond, null_cond = make_inputs()
    text_null = {"text": null_cond["text"]} if isinstance(guidance, ClassifierFreeGuidance) else null_cond
    assert guidance.dropped_keys(cond, text_null) == dropped
    assert guidance.full_condition_rows(cond, text_null) == full_rows
    model = CountingEpsModel()
    guidance(model, x_t, t, cond, text_null)
    (_, _, cond_in) = model.calls[0]
    for key, value in cond.items():
        assert torch.equal(cond_in[key][full_rows], value)


def test_prepared_guidance_runs_the_model_on_the_prepared_conditions_and_combines_alike():
    """The variants stacked once for a sampler run: each call only repeats x_t and t."""
    x_t, t, cond, null_cond = make_inputs()
    guidance = MultiConditionGuidance({"reference": 0.25, "anchor": 0.25, "text": 6.5})
    dropped = guidance.dropped_keys(cond, null_cond)
    stacked = stack_variants(guidance.condition_variants(cond, null_cond))
    prepared = PreparedGuidance(guidance, stacked, dropped)
    model = CountingEpsModel()
    for step in (t, t.flip(0)):
        torch.testing.assert_close(
            prepared(model, x_t, step, cond, null_cond),
            guidance(CountingEpsModel(), x_t, step, cond, null_cond),
        )
    assert len(model.calls) == 2 and all(call[2] is stacked for call in model.calls)
    assert prepared.dropped_keys(cond, null_cond) == dropped
    assert prepared.full_condition_rows(cond, null_cond) == slice(0, BATCH)
    with pytest.raises(ValueError, match="must have batch size B = 2"):  # x_t of 2 samples, cond of 3
        prepared(model, x_t[:2], t[:2], cond, null_cond)
    with pytest.raises(TypeError, match="already prepared"):
        PreparedGuidance(prepared, stacked, dropped)
