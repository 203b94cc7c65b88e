import math

import pytest
import torch

from rlcadence.trainer.diagnostics import (
    adam_moment_grad_cosine,
    grad_global_norm,
    optimizer_state_bytes,
    update_sparsity,
)


def test_update_sparsity_counts_in_bf16():
    before = {"w": torch.tensor([1.0, 1.0, 2.0, 0.0])}
    after = {"w": torch.tensor([1.0 + 1e-7, 1.01, 2.0, 1e-6])}
    # in bf16 (8 bits of mantissa, spacing 2^-7 = 0.0078 near 1):
    #   1 + 1e-7 -> 1.0 (unchanged; in fp32 it is 1.00000012, a change)
    #   1.01     -> 1.0078125, delta 0.0078 > 1e-5 (changed)
    #   2.0      -> unchanged
    #   1e-6     -> 9.98e-7, delta < atol 1e-5 (unchanged)
    res = update_sparsity(before, after)
    assert (res.changed, res.total) == (1, 4)
    assert res.unchanged_fraction == pytest.approx(0.75)


def test_tied_weights_counted_once():
    emb = torch.zeros(2, 3)
    before = {"embed.weight": emb, "lm_head.weight": emb, "bias": torch.zeros(2)}  # lm_head shares storage
    emb2 = torch.ones(2, 3)
    after = {"embed.weight": emb2, "lm_head.weight": emb2, "bias": torch.zeros(2)}
    # 6 tied elements (counted once) all changed + 2 bias unchanged: changed 6 of 8 (not 12 of 14)
    res = update_sparsity(before, after)
    assert (res.changed, res.total) == (6, 8)
    assert res.unchanged_fraction == pytest.approx(2 / 8)

    # from disk: no storage sharing -> name the pair explicitly; and a checkpoint that omits the tied copy
    on_disk_before = {k: v.clone() for k, v in before.items()}
    on_disk_after = {"embed.weight": emb2.clone(), "bias": torch.zeros(2)}
    tied = [("embed.weight", "lm_head.weight")]
    assert update_sparsity(on_disk_before, on_disk_after, tied=tied) == res
    with pytest.raises(ValueError):
        update_sparsity(on_disk_before, on_disk_after)  # lm_head.weight missing and not declared tied


def test_optimizer_state_bytes():
    lin = torch.nn.Linear(3, 2)  # 6 + 2 = 8 float32 parameters
    sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
    adam = torch.optim.AdamW(lin.parameters(), lr=0.1)
    assert optimizer_state_bytes(adam) == 0  # no state before the first step
    lin(torch.ones(1, 3)).sum().backward()
    sgd.step()
    adam.step()
    assert optimizer_state_bytes(sgd) == 0  # momentum-free SGD keeps nothing
    # AdamW: exp_avg + exp_avg_sq = 2 x 8 x 4 bytes = 64, plus a float32 'step' scalar per tensor: 2 x 4 = 8
    assert optimizer_state_bytes(adam) == 72


def test_adam_moment_grad_cosine():
    p = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999))
    p.grad = torch.tensor([1.0, 0.0])
    assert adam_moment_grad_cosine(adam, [p]) is None  # before the first step
    adam.step()  # exp_avg = (1 - 0.9) * g = [0.1, 0]
    assert adam_moment_grad_cosine(adam, [p]) == pytest.approx(1.0)
    p.grad = torch.tensor([-2.0, 0.0])
    assert adam_moment_grad_cosine(adam, [p]) == pytest.approx(-1.0)
    p.grad = torch.tensor([0.0, 3.0])
    assert adam_moment_grad_cosine(adam, [p]) == pytest.approx(0.0)
    p.grad = torch.tensor([1.0, 1.0])  # cos = 0.1 / (0.1 * sqrt 2) = 0.7071068
    assert adam_moment_grad_cosine(adam, [p]) == pytest.approx(1 / math.sqrt(2))
    sgd = torch.optim.SGD([p], lr=0.1)
    sgd.step()
    assert adam_moment_grad_cosine(sgd, [p]) is None


def test_grad_global_norm():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])  # c has no gradient
    assert grad_global_norm([a, b, c]) == pytest.approx(5.0)  # sqrt(9 + 16)
    assert grad_global_norm([c]) == 0.0


def test_sparsity_modes_differ_at_the_bf16_threshold():
    # bf16(1e-5) = 1.00136e-05. A weight going 0 -> bf16(1e-5) moved by 1.00136e-05:
    #   fp32_abs     : 1.00136e-05 > 1e-5                -> changed
    #   bf16_isclose : |d| <= bf16(1e-5) in bf16 arithmetic -> unchanged (the original script's count)
    # A weight 0 -> 2e-5 (bf16 1.9908e-05) is changed under both; 1.0 -> 1.0 unchanged under both.
    step = torch.tensor(1e-5).bfloat16().float().item()
    assert step == pytest.approx(1.00136e-05, rel=1e-5)
    before = {"w": torch.tensor([0.0, 0.0, 1.0])}
    after = {"w": torch.tensor([step, 2e-5, 1.0])}
    assert update_sparsity(before, after, mode="fp32_abs").changed == 2
    assert update_sparsity(before, after, mode="bf16_isclose").changed == 1
    assert update_sparsity(before, after).changed == 1  # bf16_isclose is the default
    with pytest.raises(ValueError, match="sparsity mode"):
        update_sparsity(before, after, mode="exact")
