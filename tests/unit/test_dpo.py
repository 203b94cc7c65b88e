import math
import random

import pytest
import torch

from rlcadence.objectives import DPOConfig, dpo_loss, select_pairs_scored, select_pairs_verifiable


def test_verifiable_mixed_groups_seeded():
    # G = 3; group 0 mixed, 1 all correct, 2 all incorrect, 3 mixed
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    sel = select_pairs_verifiable(rewards, 3, random.Random(0))
    # group 0: correct {0, 2}, incorrect {1}; group 3: correct {10}, incorrect {9, 11}.
    # random.Random(0) draws, in order: choice([0, 2]) -> 2, choice([1]) -> 1, choice([10]) -> 10, choice([9, 11]) -> 11
    assert sel.chosen == [2, 10]
    assert sel.rejected == [1, 11]
    assert sel.skipped_groups == 2
    assert select_pairs_verifiable(rewards, 3, random.Random(0)) == sel  # reproducible


def test_verifiable_all_correct_and_all_incorrect_are_skipped():
    for rewards in (torch.ones(6), torch.zeros(6)):
        sel = select_pairs_verifiable(rewards, 3, random.Random(0))
        assert (sel.chosen, sel.rejected, sel.skipped_groups) == ([], [], 2)


def test_verifiable_threshold():
    # threshold 0.5: correct = reward >= 0.5 -> {0, 2}; incorrect {1}. Random(0): choice([0, 2]) -> 2
    sel = select_pairs_verifiable(torch.tensor([0.7, 0.2, 0.9]), 3, random.Random(0), threshold=0.5)
    assert (sel.chosen, sel.rejected, sel.skipped_groups) == ([2], [1], 0)
    # default threshold 1.0: 0.7 and 0.9 are incorrect too -> no pair
    assert select_pairs_verifiable(torch.tensor([0.7, 0.2, 0.9]), 3, random.Random(0)).skipped_groups == 1


def test_scored_pairs_with_ties():
    scores = torch.tensor([0.3, 0.9, 0.9, 0.1, 0.5, 0.2, 0.2, 0.8, 0.4, 0.4, 0.4, 0.4])
    sel = select_pairs_scored(scores, 4)
    # group 0: max 0.9 at rows 1, 2 -> first = 1; min 0.1 at row 3
    # group 1: max 0.8 at row 7; min 0.2 at rows 5, 6 -> first = 5
    # group 2: all tied -> skipped
    assert sel.chosen == [1, 7]
    assert sel.rejected == [3, 5]
    assert sel.skipped_groups == 1


# Pair 1: pc=-10, rc=-12, pr=-15, rr=-13 -> (pc-rc) - (pr-rr) = 2 - (-2) = 4 -> logit = 0.1 * 4 = 0.4
#   -logsigmoid(0.4) = log(1 + e^-0.4) = log(1.6703200) = 0.5130153
# Pair 2: all -5 -> logit 0 -> -logsigmoid(0) = log 2 = 0.6931472
# normalizer 4 (this micro-batch holds 2 of the batch's 4 pairs): loss/dpo = (0.5130153 + 0.6931472) / 4 = 0.3015406
PC, RC = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -5.0])
PR, RR = torch.tensor([-15.0, -5.0]), torch.tensor([-13.0, -5.0])


def test_dpo_loss_hand_values():
    pc = PC.clone().requires_grad_()
    out = dpo_loss(pc, PR, RC, RR, DPOConfig(beta=0.1), normalizer=4.0)
    expected = (math.log(1 + math.exp(-0.4)) + math.log(2)) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["loss/dpo"] == pytest.approx(expected, rel=1e-6)
    assert out.metrics["loss/nll"] == 0.0
    assert out.metrics["dpo/reward_margin"] == pytest.approx((0.4 + 0.0) / 2, rel=1e-6)
    assert out.metrics["dpo/reward_accuracy"] == 0.5  # only pair 1 has a positive margin
    assert out.metrics["dpo/pairs"] == 2.0
    out.loss.backward()
    # d/dpc of -logsigmoid(beta * x) / D = -beta * sigmoid(-beta * x) / D
    #   pair 1: -0.1 * sigmoid(-0.4) / 4 = -0.1 * 0.4013123 / 4 = -0.0100328 ; pair 2: -0.1 * 0.5 / 4 = -0.0125
    sig = 1 / (1 + math.exp(0.4))
    torch.testing.assert_close(pc.grad, torch.tensor([-0.1 * sig / 4, -0.0125]))


# Three pairs whose chosen responses have 5, 3 and 1 tokens with per-token NLL 1, 2 and 3: NLL sums 5, 6, 3.
NLL_SUM, TOKENS = torch.tensor([5.0, 6.0, 3.0]), torch.tensor([5.0, 3.0, 1.0])
P3 = torch.tensor([-1.0, -2.0, -3.0])  # policy == reference: the DPO term is log 2 per pair


def test_dpo_nll_token_normalization_is_trls():
    # token (TRL sft / rpo_alpha): (5 + 6 + 3) / (5 + 3 + 1) = 14 / 9 = 1.5556; x nll_weight 0.5 = 0.7778
    out = dpo_loss(P3, P3, P3, P3, DPOConfig(nll_weight=0.5), 3.0, chosen_nll_sum=NLL_SUM, chosen_tokens=TOKENS)
    assert out.metrics["loss/nll"] == pytest.approx(0.5 * 14 / 9, rel=1e-6)
    assert out.loss.item() == pytest.approx(math.log(2) + 0.5 * 14 / 9, rel=1e-6)
    assert DPOConfig().nll_normalization == "token"


def test_dpo_nll_sequence_normalization():
    # sequence: per-response means 1, 2, 3, mean over the 3 pairs = 2; x 0.5 = 1.0 (vs 0.7778 token: 29% apart)
    cfg = DPOConfig(nll_weight=0.5, nll_normalization="sequence")
    out = dpo_loss(P3, P3, P3, P3, cfg, 3.0, chosen_nll_sum=NLL_SUM, chosen_tokens=TOKENS)
    assert out.metrics["loss/nll"] == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="chosen_nll_sum"):
        dpo_loss(PC, PR, RC, RR, DPOConfig(nll_weight=0.5), 4.0)


@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_dpo_nll_micro_batches_add_up_to_the_batch(mode):
    cfg = DPOConfig(nll_weight=1.0, nll_normalization=mode)
    whole = dpo_loss(P3, P3, P3, P3, cfg, 3.0, chosen_nll_sum=NLL_SUM, chosen_tokens=TOKENS).metrics["loss/nll"]
    parts = sum(dpo_loss(P3[s], P3[s], P3[s], P3[s], cfg, 3.0, chosen_nll_sum=NLL_SUM[s], chosen_tokens=TOKENS[s],
                         nll_token_normalizer=9.0).metrics["loss/nll"] for s in (slice(0, 2), slice(2, 3)))
    assert parts == pytest.approx(whole, rel=1e-6) and whole == pytest.approx(14 / 9 if mode == "token" else 2.0)


def test_dpo_metrics_see_no_margin_when_policy_is_the_reference():
    # The same per-token logprobs summed in another order (another forward pass): float32 sums differ by
    # ~4e-6 on rows 1 and 2, which float32 metrics counted as positive/negative margins; float64 sums are exact.
    torch.manual_seed(0)
    tokens = -torch.rand(3, 40) * 3  # [P, T] float32
    assert (tokens.sum(1) != tokens.flip(1).sum(1)).any()
    pol, ref = tokens.double().sum(1), tokens.flip(1).double().sum(1)
    out = dpo_loss(pol, pol.flip(0), ref, ref.flip(0), DPOConfig(), 3.0)
    assert out.metrics["dpo/reward_accuracy"] == 0.0 and out.metrics["dpo/reward_margin"] == 0.0


def test_dpo_micro_batches_sum_to_batch_loss():
    cfg = DPOConfig()
    whole = dpo_loss(PC, PR, RC, RR, cfg, 2.0).loss
    halves = sum(
        dpo_loss(PC[i : i + 1], PR[i : i + 1], RC[i : i + 1], RR[i : i + 1], cfg, 2.0).loss for i in range(2)
    )
    torch.testing.assert_close(whole, halves)


def test_empty_batch_gives_zero_loss_that_backpropagates():
    empty = torch.zeros(0, requires_grad=True)
    out = dpo_loss(empty, empty, torch.zeros(0), torch.zeros(0), DPOConfig(), normalizer=0.0)
    assert out.loss.item() == 0.0
    out.loss.backward()  # connected to the graph: no error, zero gradient
    assert empty.grad is not None and empty.grad.numel() == 0
    assert out.metrics["dpo/pairs"] == 0.0
    assert out.metrics["dpo/reward_accuracy"] == 0.0


def test_dpo_config_bounds():
    with pytest.raises(ValueError):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError):
        DPOConfig(nll_weight=-1.0)


def test_scored_pairs_never_use_a_missing_reward():
    nan = float("nan")
    pairs = select_pairs_scored(torch.tensor([nan, 0.2, 0.9, nan, nan, nan, 0.5, 0.5]), 4)
    assert (pairs.chosen, pairs.rejected, pairs.skipped_groups) == ([2], [1], 1)
