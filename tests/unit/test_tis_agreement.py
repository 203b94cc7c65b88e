"""Truncated importance sampling and the engine-vs-trainer log-prob agreement metric, against hand-computed values."""

from __future__ import annotations

import math

import torch

from rlcadence.objectives import PolicyLossConfig, logprob_agreement, policy_loss, tis_weights


def test_tis_weights_truncate_at_the_cap():
    trainer_old = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    engine = torch.tensor([[math.log(0.25), math.log(0.4), 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w = tis_weights(trainer_old, engine, mask, cap=1.5)
    # exp(log .5 - log .25) = 2 -> capped at 1.5; exp(log .2 - log .4) = 0.5; off the mask: 1
    assert torch.allclose(w, torch.tensor([[1.5, 0.5, 1.0]]))


def test_policy_loss_weights_each_token_by_its_is_weight():
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]], requires_grad=True)
    w = torch.tensor([[1.5, 0.5]])
    out = policy_loss(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 2), 1.0, PolicyLossConfig(), is_weights=w)
    # ratio 1, A = 1: token terms -w * 1 = [-1.5, -0.5]; seq_mean_token_mean over 2 tokens, 1 row: -1.0
    assert math.isclose(out.loss.item(), -1.0, rel_tol=1e-6)
    out.loss.backward()
    # d/dlogp of -(w * exp(logp - old) * A) / 2 at ratio 1 = -w / 2
    assert torch.allclose(logp.grad, torch.tensor([[-0.75, -0.25]]))
    assert math.isclose(out.metrics["tis/weight_mean"], 1.0)


def test_agreement_mean_and_max_over_valid_tokens():
    trainer = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    engine = torch.tensor([[-1.1, -2.0], [-0.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    m = logprob_agreement(trainer, engine, mask)
    # |diffs| on the mask: 0.1, 0.0, 0.3 (the 9.0 is padding)
    assert math.isclose(m["logprob/engine_trainer_abs_diff_mean"], 0.4 / 3, rel_tol=1e-6)
    assert math.isclose(m["logprob/engine_trainer_abs_diff_max"], 0.3, rel_tol=1e-6)
    assert logprob_agreement(trainer, engine, torch.zeros(2, 2)) == {}
