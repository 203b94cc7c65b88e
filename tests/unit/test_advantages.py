import math

import pytest
import torch

from rlcadence.objectives import AdvantageConfig, group_advantages, zero_advantage_group_fraction

# Two groups of G=4: one with a single correct answer, one all correct.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


def test_std_normalized_biased_std():
    # group 0: mean 0.25, r - mean = [0.75, -0.25, -0.25, -0.25]
    #   population var = (0.75^2 + 3 * 0.25^2) / 4 = (0.5625 + 0.1875) / 4 = 0.1875, std = sqrt(3)/4 = 0.4330127
    #   A = 0.75 / 0.4330127 = sqrt(3) = 1.7320508 ; -0.25 / 0.4330127 = -1/sqrt(3) = -0.5773503
    # group 1: all equal -> r - mean = 0 -> A = 0 exactly (0 / (0 + eps))
    a = group_advantages(REWARDS, 4, AdvantageConfig(eps=0.0))
    s3 = math.sqrt(3.0)
    expected = torch.tensor([s3, -1 / s3, -1 / s3, -1 / s3, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(a, expected)
    assert torch.equal(a[4:], torch.zeros(4))


def test_unbiased_std_and_eps():
    # group 0: sample var = 0.75 / (4 - 1) = 0.25, std = 0.5
    #   eps = 0    : A = [0.75, -0.25, -0.25, -0.25] / 0.5 = [1.5, -0.5, -0.5, -0.5]
    #   eps = 1e-4 : A = 0.75 / 0.5001 = 1.4997001, -0.25 / 0.5001 = -0.4999000 (DASH's setting)
    a = group_advantages(REWARDS, 4, AdvantageConfig(unbiased_std=True, eps=0.0))
    torch.testing.assert_close(a[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    a = group_advantages(REWARDS, 4, AdvantageConfig(unbiased_std=True, eps=1e-4))
    torch.testing.assert_close(
        a[:4], torch.tensor([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    )
    torch.testing.assert_close(a[4:], torch.zeros(4))


def test_without_std_is_reward_minus_mean():
    # paper A's text: A = r - mean(r) -> [0.75, -0.25, -0.25, -0.25], [0, 0, 0, 0]
    a = group_advantages(REWARDS, 4, AdvantageConfig(scale="none"))
    torch.testing.assert_close(a, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]))


def test_eps_is_added_to_std():
    # [1, 0]: mean 0.5, population std 0.5; eps = 1 -> A = 0.5 / (0.5 + 1) = 1/3
    a = group_advantages(torch.tensor([1.0, 0.0]), 2, AdvantageConfig(eps=1.0))
    torch.testing.assert_close(a, torch.tensor([1 / 3, -1 / 3]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2, AdvantageConfig())
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(3), 1, AdvantageConfig(unbiased_std=True))


def test_zero_advantage_group_fraction():
    # groups: [1,0,0,0] mixed, [1,1,1,1] all correct, [0,0,0,0] all wrong -> 2 of 3
    rewards = torch.cat([REWARDS, torch.zeros(4)])
    assert zero_advantage_group_fraction(rewards, 4) == pytest.approx(2 / 3)
    assert zero_advantage_group_fraction(torch.tensor([0.0, 1.0]), 2) == 0.0


def test_old_std_normalize_reads_as_scale():
    assert AdvantageConfig(std_normalize=False).scale == "none"
    assert AdvantageConfig.model_validate({"std_normalize": True}).scale == "group"
    with pytest.raises(ValueError, match="contradicts"):
        AdvantageConfig.model_validate({"std_normalize": False, "scale": "batch"})


def test_batch_scale_divides_by_the_std_of_the_whole_batch():
    # REWARDS: 1, 0, 0, 0 | 1, 1, 1, 1. Batch mean 5/8 = 0.625; population var over the 8 rewards:
    #   (5 * 0.375^2 + 3 * 0.625^2) / 8 = (0.703125 + 1.171875) / 8 = 0.234375, std = 0.4841229
    # group 0: r - mean_g = [0.75, -0.25, -0.25, -0.25] / 0.4841229 = [1.5491933, -0.5163978, ...]; group 1: 0
    a = group_advantages(REWARDS, 4, AdvantageConfig(scale="batch", eps=0.0))
    std = math.sqrt(0.234375)
    torch.testing.assert_close(a, torch.tensor([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0, 0, 0, 0]))
    # unbiased (torch.std's default, as TRL): var = 1.875 / 7 = 0.2678571, std = 0.5175492
    a = group_advantages(REWARDS, 4, AdvantageConfig(scale="batch", eps=0.0, unbiased_std=True))
    torch.testing.assert_close(a[0], torch.tensor(0.75 / math.sqrt(1.875 / 7)))


def test_none_rewards_are_left_out_of_the_group_statistics():
    # group 0: [1, NaN, 0, 0] -> valid [1, 0, 0]: mean 1/3, r - mean = [2/3, -, -1/3, -1/3]
    #   population var = (4/9 + 1/9 + 1/9) / 3 = 2/9, std = 0.4714045 -> A = [1.4142136, 0, -0.7071068, -0.7071068]
    # group 1: [NaN, 1, 1, 1] -> uniform valid rewards -> 0; group 2: [NaN, NaN, NaN, 1] -> one valid -> 0
    nan = float("nan")
    r = torch.tensor([1.0, nan, 0.0, 0.0, nan, 1.0, 1.0, 1.0, nan, nan, nan, 1.0])
    a = group_advantages(r, 4, AdvantageConfig(eps=0.0))
    s2 = math.sqrt(2.0)
    torch.testing.assert_close(a, torch.tensor([s2, 0.0, -1 / s2, -1 / s2] + [0.0] * 8))
    assert not torch.isnan(group_advantages(r, 4, AdvantageConfig(scale="batch"))).any()
    assert not torch.isnan(group_advantages(r, 4, AdvantageConfig(scale="none"))).any()
