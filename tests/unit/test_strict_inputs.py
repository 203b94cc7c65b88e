"""Every float field of every config model refuses inf/nan; a boolean is not a number."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, ValidationError

from rlcadence.config import RLConfig
from rlcadence.storage.s3 import S3Settings
from rlcadence.strict import _scalar_types

REQUIRED = {"PromptSource": {"path": "x.jsonl"}, "JudgeSpec": {"model": "m"}, "RewardTerm": {"verifier": "math"}}


def models(root: type[BaseModel], seen: set | None = None) -> set[type[BaseModel]]:
    """``root`` and every model type reachable through its fields."""
    seen = set() if seen is None else seen
    if root in seen:
        return seen
    seen.add(root)
    for field in root.model_fields.values():
        stack = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                models(tp, seen)
            stack.extend(getattr(tp, "__args__", ()))
    return seen


def float_fields() -> list[tuple[type[BaseModel], str]]:
    out = []
    for model in sorted(models(RLConfig) | {S3Settings}, key=lambda m: m.__name__):
        for name, field in model.model_fields.items():
            if float in _scalar_types(field.annotation):
                out.append((model, name))
    return out


def test_the_walk_finds_the_fields_of_the_issue():
    names = {(m.__name__, f) for m, f in float_fields()}
    assert {("OptimizerConfig", "lr"), ("SamplingParams", "temperature"), ("DPOConfig", "beta"),
            ("OptimizerConfig", "grad_clip")} <= names
    assert len(names) > 20


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_field_refuses_non_finite(value):
    for model, name in float_fields():
        with pytest.raises(ValidationError, match="finite number") as ei:
            model.model_validate(REQUIRED.get(model.__name__, {}) | {name: value})
        assert ei.value.errors()[0]["loc"] == (name,), (model.__name__, name)


def test_infinity_from_the_cli_is_refused_naming_the_field():
    from rlcadence.cli import build_config

    with pytest.raises(ValidationError) as ei:
        build_config("default", None, ["optimizer.lr=Infinity"], None, None)
    assert ei.value.errors()[0]["loc"] == ("optimizer", "lr")


@pytest.mark.parametrize("field", ["steps", "eval_every", "sync_every", "prompts_per_step", "seed"])
def test_a_boolean_is_not_a_number(field):
    with pytest.raises(ValidationError, match="not a boolean") as ei:
        RLConfig.model_validate({field: True})
    assert ei.value.errors()[0]["loc"] == (field,)


def test_booleans_still_set_boolean_fields_and_numbers_numeric_ones():
    cfg = RLConfig.model_validate({"bf16_autocast": False, "steps": 3, "optimizer": {"lr": 1}})
    assert cfg.bf16_autocast is False and cfg.steps == 3 and cfg.optimizer.lr == 1.0
