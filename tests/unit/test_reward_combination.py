"""Several reward functions per environment, with weights: sum and normalize-then-sum, None left out."""

from __future__ import annotations

import math

import pytest

from rlcadence.environments.mix import open_environments
from rlcadence.environments.rewards import combine_rewards
from rlcadence.environments.spec import EnvironmentSpec

NAN = float("nan")


def test_weighted_sum():
    # w = (1, 0.5): rows (1, 0) -> 1, (0, 1) -> 0.5, (1, 1) -> 1.5
    assert combine_rewards([[1, 0, 1], [0, 1, 1]], [1.0, 0.5], "sum") == [1.0, 0.5, 1.5]


def test_normalized_sum_z_scores_each_term_first():
    # term 1 [0, 1, 2]: mean 1, population std sqrt(2/3) = 0.8164966 -> z = [-1.2247449, 0, 1.2247449]
    # term 2 [10, 10, 40]: mean 20, std sqrt(200) = 14.142136 -> z = [-0.7071068, -0.7071068, 1.4142136]
    # w = (1, 2): [-1.2247449 - 1.4142136, -1.4142136, 1.2247449 + 2.8284271] = [-2.6389584, -1.4142136, 4.0531720]
    got = combine_rewards([[0, 1, 2], [10, 10, 40]], [1.0, 2.0], "normalized_sum")
    assert got == pytest.approx([-2.6389584, -1.4142136, 4.0531720], rel=1e-6)
    # a constant term carries no signal: z = 0
    assert combine_rewards([[3, 3], [0, 1]], [1.0, 1.0], "normalized_sum") == pytest.approx([-1.0, 1.0])


def test_none_terms_are_left_out():
    # row 0: term 2 missing -> 1 * 1 = 1; row 1: both missing -> NaN (no reward); row 2: 0 + 0.5 * 1 = 0.5
    got = combine_rewards([[1, NAN, 0], [NAN, NAN, 1]], [1.0, 0.5], "sum")
    assert got[0] == 1.0 and math.isnan(got[1]) and got[2] == 0.5
    # normalized: term 1 valid [1, 0] -> z [1, -1]; term 2 valid [1] -> z [0]: rows [1, NaN, -1 + 0]
    got = combine_rewards([[1, NAN, 0], [NAN, NAN, 1]], [1.0, 0.5], "normalized_sum")
    assert got[0] == 1.0 and math.isnan(got[1]) and got[2] == -1.0
    with pytest.raises(ValueError, match="weights"):
        combine_rewards([[1.0]], [1.0, 2.0], "sum")


def test_an_environment_with_two_weighted_verifiers(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "2+2=", "gold": "4"}\n')
    spec = EnvironmentSpec.model_validate({
        "name": "two", "kind": "dataset", "source": {"path": str(data)},
        "rewards": [{"verifier": "exact_match", "weight": 1.0}, {"verifier": "numeric", "weight": 0.5}]})
    assert spec.verifiable
    [env] = open_environments([spec], seed=0, split_seed=0, digits=3, n_heldout=10)
    results = env.score(["2+2="] * 3, ["4", "4.0", "5"], ["4"] * 3)
    exact = [r.reward for r in env._get_scorer()[0](["4", "4.0", "5"], ["4"] * 3)]
    numeric = [r.reward for r in env._get_scorer()[1](["4", "4.0", "5"], ["4"] * 3)]
    assert (exact, numeric) == ([1.0, 0.0, 0.0], [1.0, 1.0, 0.0])  # "4.0" is numerically right, not exactly
    assert [r.reward for r in results] == [1.5, 0.5, 0.0]  # 1 * exact + 0.5 * numeric
    assert results[0].detail.startswith("exact_match=") and "; numeric=" in results[0].detail
    env.close()


def test_rewards_and_verifier_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="exactly one of verifier / rewards"):
        EnvironmentSpec.model_validate({"name": "x", "kind": "dataset", "source": {"path": "d.jsonl"},
                                        "verifier": "math", "rewards": [{"verifier": "numeric"}]})
