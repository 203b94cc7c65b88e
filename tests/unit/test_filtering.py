import pytest
import torch

from rlcadence.objectives import (
    AdvantageConfig,
    FilterConfig,
    PolicyLossConfig,
    gradient_filter_mask,
    group_advantages,
    loss_normalizer,
    policy_loss,
)


def test_keep_iff_abs_advantage_above_tau():
    a = torch.tensor([1.5, -0.05, 0.1, -0.2, 0.0])
    # |A| > 0.1 (strict): 1.5 yes, 0.05 no, 0.1 no (equal), 0.2 yes, 0 no
    assert gradient_filter_mask(a, 0.1).tolist() == [True, False, False, True, False]
    assert gradient_filter_mask(a, None).tolist() == [True] * 5
    with pytest.raises(ValueError):
        gradient_filter_mask(a, -1.0)
    with pytest.raises(ValueError):
        FilterConfig(tau=-0.1)


def test_binary_rewards_filter_drops_uniform_groups():
    # DASH: A = (r - mean) / (std + 1e-4) with unbiased std, tau = 0.1
    rewards = torch.tensor(
        [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    )  # groups of 2: mixed, all 1, all 0, mixed
    a = group_advantages(rewards, 2, AdvantageConfig(unbiased_std=True, eps=1e-4))
    assert gradient_filter_mask(a, 0.1).tolist() == [True, True, False, False, False, False, True, True]


def _grad_of_kept_rows(normalize_by: str) -> torch.Tensor:
    # 4 rows x 2 tokens, all valid; groups of 2 with rewards [1, 0], [1, 1] -> A = [1, -1, 0, 0] (eps = 0)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv = group_advantages(rewards, 2, AdvantageConfig(eps=0.0))
    kept = gradient_filter_mask(adv, 0.1)  # [T, T, F, F]
    mask = torch.ones(4, 2)
    cfg = PolicyLossConfig(aggregation="token_sum_norm")
    norm = loss_normalizer(mask, kept, cfg.aggregation, 2, normalize_by)
    logp = torch.zeros(2, 2, requires_grad=True)  # kept rows only, on-policy: ratio = 1
    policy_loss(logp, logp.detach(), adv[kept], mask[kept], norm, cfg).loss.backward()
    return logp.grad


def test_filtering_scales_surviving_gradient_by_n_over_kept():
    # loss = sum_it -A_i * ratio_it / D  ->  d loss / d logp_it = -A_i / D  (ratio = 1)
    # 'kept': D = 2 kept rows x 2 tokens = 4 -> row 0: -1/4 = -0.25, row 1: +0.25
    # 'all' : D = 4 rows     x 2 tokens = 8 -> row 0: -1/8 = -0.125, row 1: +0.125
    # so DASH's 'kept' scales the surviving gradient by N / kept = 4 / 2 = 2
    g_kept = _grad_of_kept_rows("kept")
    g_all = _grad_of_kept_rows("all")
    torch.testing.assert_close(g_kept, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))
    torch.testing.assert_close(g_all, torch.tensor([[-0.125, -0.125], [0.125, 0.125]]))
    torch.testing.assert_close(g_kept, 2.0 * g_all)


def test_filtering_with_normalize_by_all_equals_no_filtering():
    # Dropped rows have A = 0, so they contribute no policy gradient: with D over all rows the gradient of
    # the kept rows is the unfiltered one, and the dropped rows' gradient is 0 anyway.
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0])
    mask = torch.ones(4, 2)
    cfg = PolicyLossConfig(aggregation="token_sum_norm")
    logp = torch.zeros(4, 2, requires_grad=True)
    norm = loss_normalizer(mask, torch.ones(4, dtype=torch.bool), cfg.aggregation, 2, "kept")  # 8
    policy_loss(logp, logp.detach(), adv, mask, norm, cfg).loss.backward()
    torch.testing.assert_close(logp.grad[:2], _grad_of_kept_rows("all"))
    assert torch.equal(logp.grad[2:], torch.zeros(2, 2))
