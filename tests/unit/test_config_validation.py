"""Refused combinations of RLConfig: each fails at validation, before any work, naming the parameter."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlcadence.config import RLConfig

BASE = {"prompts_per_step": 8, "group_size": 4}  # a batch of 32 rows


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"algorithm": "dpo", "group_size": 1}, ["group_size"], id="dpo-group-size-1"),
        pytest.param({"group_size": 0}, ["group_size"], id="group-size-0"),
        pytest.param({"ppo_epochs": 0}, ["ppo_epochs"], id="ppo-epochs-0"),
        pytest.param({"mini_batches": 0}, ["mini_batches"], id="mini-batches-0"),
        pytest.param({"filter": {"tau": -0.1}}, ["filter.tau"], id="tau-negative"),
        pytest.param({"micro_batch_size": 33}, ["micro_batch_size"], id="micro-batch-larger-than-batch"),
        pytest.param({"micro_batch_size": 0}, ["micro_batch_size"], id="micro-batch-0"),
        pytest.param({"mini_batches": 33}, ["mini_batches"], id="mini-batches-larger-than-batch"),
        pytest.param({"algorithm": "dpo", "ppo_epochs": 2}, ["algorithm", "ppo_epochs"], id="dpo-ppo-epochs"),
        pytest.param({"algorithm": "dpo", "filter": {"tau": 0.1}}, ["algorithm", "filter.tau"], id="dpo-filter"),
        pytest.param({"generation_batch_prompts": 9}, ["generation_batch_prompts", "prompts_per_step"],
                     id="generation-batch-larger-than-prompts"),
        pytest.param({"optimizer": {"name": "sgd", "lr": 0.0}}, ["optimizer.lr"], id="lr-0"),
        pytest.param({"policy_loss": {"kl_beta": -0.01}}, ["policy_loss.kl_beta"], id="kl-beta-negative"),
        pytest.param({"policy_loss": {"kl_estimator": "k4"}}, ["policy_loss.kl_estimator"], id="kl-estimator"),
        pytest.param({"policy_loss": {"aggregation": "sum"}}, ["policy_loss.aggregation"], id="aggregation"),
        pytest.param({"dpo": {"beta": 0.0}}, ["dpo.beta"], id="dpo-beta-0"),
        pytest.param({"dpo": {"nll_weight": -1.0}}, ["dpo.nll_weight"], id="nll-weight-negative"),
        pytest.param({"sync_every": 0}, ["sync_every"], id="sync-every-0"),
        pytest.param({"ref_sync_every": "never"}, ["ref_sync_every"], id="ref-sync-every-word"),
        pytest.param({"algorithm": "ppo"}, ["algorithm"], id="unknown-algorithm"),
    ],
)
def test_refused(overrides, named):
    with pytest.raises(ValidationError) as err:
        RLConfig.model_validate(BASE | overrides)
    message = str(err.value)
    for name in named:
        assert name in message, f"{name!r} not named in:\n{message}"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"micro_batch_size": 32}, id="micro-batch-equal-to-batch"),
        pytest.param({"mini_batches": 32}, id="one-row-per-mini-batch"),
        pytest.param({"ppo_epochs": 3, "mini_batches": 4, "micro_batch_size": 4}, id="ppo-multi-mini-micro"),
        pytest.param({"filter": {"tau": 0.0}}, id="tau-0"),
        pytest.param({"algorithm": "dpo", "group_size": 2, "dpo": {"nll_weight": 1.0}}, id="dpo-pairs-of-2"),
        pytest.param({"algorithm": "dpo", "mini_batches": 2, "micro_batch_size": 2}, id="dpo-mini-micro"),
        pytest.param({"algorithm": "sft", "optimizer": {"name": "sgd"}}, id="sft-sgd"),
        pytest.param({"generation_batch_prompts": 8}, id="generation-batch-equal-to-prompts"),
        pytest.param({"sync_every": "offline", "ref_sync_every": 10}, id="cadences"),
    ],
)
def test_accepted(overrides):
    RLConfig.model_validate(BASE | overrides)


def test_old_tasks_key_names_the_new_one():
    import pydantic

    from rlcadence.config import RLConfig

    for raw, new in (({"tasks": [{"name": "arithmetic"}]}, "environments"), ({"bootstrap": {"task": {}}}, "environment")):
        try:
            RLConfig.model_validate(raw)
        except pydantic.ValidationError as err:
            assert f"write `{new}:` instead" in str(err)
        else:
            raise AssertionError(f"{raw} was accepted")
