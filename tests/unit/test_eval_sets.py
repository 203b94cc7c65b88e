"""Eval-set configuration: presets, and refusals (k of 0, pass@k beyond k samples, duplicate names), each
naming the field before any work; eval-set files validated like training data."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from rlcadence.config import RLConfig
from rlcadence.environments.datasets import DatasetError
from rlcadence.environments.eval_sets import EvalSetSpec, load_eval_set
from rlcadence.environments.spec import EnvironmentSpec


def _env(tmp_path, **eval_set) -> dict:
    return {"name": "sums", "kind": "dataset", "verifier": "exact_match",
            "source": {"path": str(tmp_path / "train.jsonl")},
            "eval_sets": [{"name": "heldout", "source": {"path": str(tmp_path / "eval.jsonl")}} | eval_set]}


def test_sampling_defaults_to_greedy_and_paper_a_is_a_preset(tmp_path):
    spec = EvalSetSpec(name="m", source={"path": "x.jsonl"})
    assert spec.sampling.temperature == 0.0 and spec.pass_ks == [1]
    paper = EvalSetSpec(name="m", source={"path": "x.jsonl"}, sampling="paper_a", k=8)
    assert (paper.sampling.temperature, paper.sampling.top_p) == (0.6, 0.9)
    assert paper.pass_ks == [1, 8]
    longer = EvalSetSpec(name="m", source={"path": "x.jsonl"}, sampling={"preset": "paper_a", "max_new_tokens": 99})
    assert (longer.sampling.temperature, longer.sampling.max_new_tokens) == (0.6, 99)


@pytest.mark.parametrize(
    ("eval_set", "named"),
    [
        pytest.param({"k": 0}, ["eval_sets.0.k"], id="k-0"),
        pytest.param({"k": 4, "pass_at": [1, 8]}, ["pass_at", "k=4"], id="pass-at-beyond-k"),
        pytest.param({"pass_at": [0]}, ["pass_at"], id="pass-at-0"),
        pytest.param({"sampling": "hot"}, ["sampling", "paper_a"], id="unknown-preset"),
        pytest.param({"name": "bad name"}, ["eval_sets.0.name"], id="bad-name"),
    ],
)
def test_refused_naming_the_field(tmp_path, eval_set, named):
    with pytest.raises(ValidationError) as err:
        RLConfig.model_validate({"environments": [_env(tmp_path, **eval_set)]})
    for name in named:
        assert name in str(err.value), str(err.value)


def test_eval_set_names_unique_over_environments(tmp_path):
    twice = [_env(tmp_path), _env(tmp_path) | {"name": "other"}]
    with pytest.raises(ValidationError, match="eval_sets: names must be unique"):
        RLConfig.model_validate({"environments": twice})


def test_a_trained_dataset_environment_needs_its_source(tmp_path):
    eval_only = {k: v for k, v in _env(tmp_path).items() if k != "source"}
    EnvironmentSpec.model_validate(eval_only)  # fine for `rlcadence eval`
    with pytest.raises(ValidationError, match="needs a source to train on"):
        RLConfig.model_validate({"environments": [eval_only]})


def test_rows_without_the_gold_column_are_refused_naming_file_and_line(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "gold": "2"}) + "\n" + json.dumps({"prompt": "2+2="}) + "\n")
    env = EnvironmentSpec.model_validate(_env(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_eval_set(env.eval_source(env.eval_sets[0]), env.eval_sets[0])
    assert str(path) in str(err.value) and "line 2: missing field 'gold'" in str(err.value)


def test_scored_environments_need_no_gold(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"prompt": "len:4>"}) + "\n")
    env = EnvironmentSpec.model_validate({"name": "toy", "kind": "toy_pref",
                                          "eval_sets": [{"name": "t", "source": {"path": str(path)}}]})
    rows = load_eval_set(env.eval_source(env.eval_sets[0]), env.eval_sets[0]).rows
    assert [(r.prompt, r.gold) for r in rows] == [("len:4>", None)]
