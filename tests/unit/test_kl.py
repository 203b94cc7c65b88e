import math

import pytest
import torch

from rlcadence.objectives import kl_estimate, kl_k1, kl_k2, kl_k3

# tokens:        a      b      c
LOGP = torch.tensor([-1.0, -2.0, -0.5])
REF = torch.tensor([-2.0, -1.0, -0.5])
# d = logp - ref = [1, -1, 0]


def test_k1():
    # k1 = d
    torch.testing.assert_close(kl_k1(LOGP, REF), torch.tensor([1.0, -1.0, 0.0]))


def test_k2():
    # k2 = d^2 / 2 = [0.5, 0.5, 0]
    torch.testing.assert_close(kl_k2(LOGP, REF), torch.tensor([0.5, 0.5, 0.0]))


def test_k3():
    # k3 = exp(ref - logp) - (ref - logp) - 1
    # a: exp(-1) + 1 - 1 = e^-1 = 0.3678794 ; b: exp(1) - 1 - 1 = e - 2 = 0.7182818 ; c: 1 - 0 - 1 = 0
    torch.testing.assert_close(kl_k3(LOGP, REF), torch.tensor([math.exp(-1), math.e - 2, 0.0]))


def test_dispatch_and_gradient_flows_only_to_logprobs():
    logp = LOGP.clone().requires_grad_()
    ref = REF.clone().requires_grad_()
    kl_estimate(logp, ref, "k3").sum().backward()
    # d k3 / d logp = 1 - exp(ref - logp): a: 1 - e^-1 = 0.6321206 ; b: 1 - e = -1.7182818 ; c: 0
    torch.testing.assert_close(logp.grad, torch.tensor([1 - math.exp(-1), 1 - math.e, 0.0]))
    assert ref.grad is None
    torch.testing.assert_close(kl_estimate(LOGP, REF, "k1"), kl_k1(LOGP, REF))
    with pytest.raises(ValueError):
        kl_estimate(LOGP, REF, "k4")
