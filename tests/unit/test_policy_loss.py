import math

import pytest
import torch

from rlcadence.objectives import PolicyLossConfig, loss_normalizer, policy_loss

# Hand example: 2 rows x 3 tokens, old_logprobs = 0 so ratio = exp(logprobs).
#   row 0: A = +1, ratios [1.5, 0.9, 1.0], all 3 tokens valid
#   row 1: A = -1, ratios [0.5, 1.1, 100.0], last token is padding (mask 0) and must be ignored
RATIOS = torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.1, 100.0]])
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# per token -min(r*A, clip(r, 0.8, 1.2)*A):
#   r=1.5, A=+1: min(1.5, 1.2) = 1.2 -> -1.2 (clipped)   r=0.9, A=+1: -0.9   r=1.0, A=+1: -1.0
#   r=0.5, A=-1: min(-0.5, -0.8) = -0.8 -> 0.8 (clipped)  r=1.1, A=-1: min(-1.1, -1.1) -> 1.1
# row sums: -3.1, 1.9 ; row means: -31/30, 0.95 ; token sum -1.2 ; clipped 2 of 5 valid tokens


def _run(aggregation: str, normalizer: float, **cfg):
    logp = torch.log(RATIOS).requires_grad_()
    out = policy_loss(
        logp, torch.zeros(2, 3), ADV, MASK, normalizer, PolicyLossConfig(aggregation=aggregation, **cfg)
    )
    out.loss.backward()
    return out, logp.grad


@pytest.mark.parametrize(
    "aggregation, normalizer, expected",
    [
        ("seq_mean_token_mean", 2.0, (-31 / 30 + 0.95) / 2),  # = -1/24 = -0.0416667
        ("token_mean", 5.0, -1.2 / 5),  # = -0.24
        ("token_sum_norm", 6.0, -1.2 / 6),  # 2 rows x max_len 3 -> -0.2
    ],
)
def test_clip_hand_example(aggregation, normalizer, expected):
    assert loss_normalizer(MASK, torch.ones(2, dtype=torch.bool), aggregation, 3, "kept") == normalizer
    out, _ = _run(aggregation, normalizer)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    m = out.metrics
    assert m["loss/policy"] == pytest.approx(expected, rel=1e-5)
    assert m["loss/kl"] == 0.0
    assert m["clip/fraction"] == pytest.approx(2 / 5)
    # ratio over valid tokens: (1.5 + 0.9 + 1.0 + 0.5 + 1.1) / 5 = 1.0 ; the padded 100 is ignored
    assert m["ratio/mean"] == pytest.approx(1.0, rel=1e-5)
    assert m["ratio/max"] == pytest.approx(1.5, rel=1e-5)
    assert m["ratio/min"] == pytest.approx(0.5, rel=1e-5)
    assert m["tokens/valid"] == 5.0


def test_clipped_tokens_have_zero_gradient():
    # token_sum_norm, D = 6: d/dlogp of -r*A/D = -A*r/D on unclipped tokens, 0 on clipped and padding
    #   row 0: [0 (clipped), -0.9/6 = -0.15, -1.0/6] ; row 1: [0 (clipped), +1.1/6, 0 (padding)]
    _, grad = _run("token_sum_norm", 6.0)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.15, -1 / 6], [0.0, 1.1 / 6, 0.0]]))


def test_asymmetric_clip_high():
    # eps_high = 0.28: r = 1.5, A = +1 -> min(1.5, 1.28) = 1.28 ; other tokens unchanged
    # token sum: -1.28 - 0.9 - 1.0 + 0.8 + 1.1 = -1.28 ; / 6 = -0.2133333
    out, _ = _run("token_sum_norm", 6.0, clip_eps_high=0.28)
    assert out.loss.item() == pytest.approx(-1.28 / 6, rel=1e-5)


def test_on_policy_is_vanilla_policy_gradient():
    # ratio = 1 everywhere: loss = sum_i mean_t(-A_i) / D ; d/dlogp_it = -A_i / (n_i * D)
    # seq_mean_token_mean, D = 2 rows: row 0 (3 tokens): -1/6 each ; row 1 (2 tokens): +1/4 each
    logp = torch.tensor([[-0.3, -1.2, -0.7], [-2.0, -0.1, -5.0]], requires_grad=True)
    out = policy_loss(logp, logp.detach(), ADV, MASK, 2.0, PolicyLossConfig())
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [0.25, 0.25, 0.0]]))
    assert out.loss.item() == pytest.approx((-1.0 + 1.0) / 2, abs=1e-7)
    assert out.metrics["clip/fraction"] == 0.0
    assert out.metrics["ratio/mean"] == pytest.approx(1.0)


def test_kl_term_hand_example():
    # one row, 2 tokens, A = 0 (no policy term), ratio = 1; logp = [-1, -2], ref = [-2, -1]
    # k3 = [e^-1, e - 2] = [0.3678794, 0.7182818], token mean 0.5430806
    # seq_mean_token_mean, D = 1, beta = 0.5: loss = 0.5 * 0.5430806 = 0.2715403
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    cfg = PolicyLossConfig(kl_beta=0.5, kl_estimator="k3")
    out = policy_loss(
        logp,
        logp.detach(),
        torch.zeros(1),
        torch.ones(1, 2),
        1.0,
        cfg,
        ref_logprobs=torch.tensor([[-2.0, -1.0]]),
    )
    k3_mean = (math.exp(-1) + math.e - 2) / 2
    assert out.loss.item() == pytest.approx(0.5 * k3_mean, rel=1e-6)
    assert out.metrics["loss/kl"] == pytest.approx(0.5 * k3_mean, rel=1e-6)
    assert out.metrics["kl/mean"] == pytest.approx(k3_mean, rel=1e-6)
    assert out.metrics["loss/policy"] == 0.0
    with pytest.raises(ValueError):
        policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), 1.0, cfg)


def test_padding_garbage_does_not_leak():
    # -inf logprobs and huge ref values on padding must give a finite loss and finite (zero) gradient there
    logp = torch.tensor([[-0.5, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-0.5, 80.0]])
    cfg = PolicyLossConfig(kl_beta=0.1)
    out = policy_loss(
        logp, torch.tensor([[-0.5, 0.0]]), torch.ones(1), torch.tensor([[1.0, 0.0]]), 1.0, cfg, ref
    )
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, 0.0]]))  # -A * ratio / (1 token * D=1)


def test_loss_normalizer_hand_values():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    kept = torch.tensor([True, False, True])
    # seq_mean_token_mean: rows -> kept 2, all 3
    assert loss_normalizer(mask, kept, "seq_mean_token_mean", 4, "kept") == 2.0
    assert loss_normalizer(mask, kept, "seq_mean_token_mean", 4, "all") == 3.0
    # token_mean: valid tokens -> kept 3 + 1 = 4, all 3 + 2 + 1 = 6
    assert loss_normalizer(mask, kept, "token_mean", 4, "kept") == 4.0
    assert loss_normalizer(mask, kept, "token_mean", 4, "all") == 6.0
    # token_sum_norm: rows x max_completion_len -> 2 x 4 = 8, 3 x 4 = 12
    assert loss_normalizer(mask, kept, "token_sum_norm", 4, "kept") == 8.0
    assert loss_normalizer(mask, kept, "token_sum_norm", 4, "all") == 12.0
    # nothing kept -> 1.0 so the (empty) loss is 0, not NaN
    assert loss_normalizer(mask, torch.zeros(3, dtype=torch.bool), "token_mean", 4, "kept") == 1.0
    with pytest.raises(ValueError):
        loss_normalizer(mask, kept, "token_sum_norm", 2, "kept")  # a kept row has 3 > 2 tokens


def test_config_bounds():
    with pytest.raises(ValueError):
        PolicyLossConfig(kl_beta=-0.1)
    with pytest.raises(ValueError):
        PolicyLossConfig(aggregation="sum")
    with pytest.raises(ValueError):
        PolicyLossConfig(clip_eps=0.2)  # unknown field


@pytest.mark.parametrize("normalize_by", ["kept", "all"])
@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "token_sum_norm"])
def test_micro_batch_accumulation_equals_one_batch(aggregation, normalize_by):
    # 6 rows x 4 tokens of logits from a tiny Linear; ragged masks, a filtered row set, off-policy old
    # logprobs (so some tokens clip) and a KL term: accumulating micro-batch gradients, each divided by the
    # whole-batch normalizer, must equal the one-batch gradient.
    g = torch.Generator().manual_seed(0)
    n, length, d, vocab = 6, 4, 3, 5
    feats = torch.randn(n, length, d, generator=g)  # [N, L, d]
    targets = torch.randint(vocab, (n, length), generator=g)  # [N, L]
    mask = (torch.arange(length) < torch.tensor([4, 1, 3, 2, 4, 3]).unsqueeze(1)).float()  # [N, L]
    adv = torch.randn(n, generator=g)  # [N]
    kept = torch.tensor([True, False, True, True, False, True])
    old = torch.randn(n, length, generator=g) * 0.3 - 1.6  # [N, L]
    ref = torch.randn(n, length, generator=g) * 0.3 - 1.6  # [N, L]
    cfg = PolicyLossConfig(aggregation=aggregation, kl_beta=0.05)
    lin = torch.nn.Linear(d, vocab)
    torch.nn.init.normal_(lin.weight, generator=g)

    def grads(chunks: list[list[int]]) -> list[torch.Tensor]:
        lin.zero_grad()
        norm = loss_normalizer(mask, kept, aggregation, length, normalize_by)
        clipped = 0.0
        for rows in chunks:
            r = torch.tensor(rows)
            logp = (
                torch.log_softmax(lin(feats[r]), -1).gather(-1, targets[r].unsqueeze(-1)).squeeze(-1)
            )  # [n, L]
            out = policy_loss(logp, old[r], adv[r], mask[r], norm, cfg, ref_logprobs=ref[r])
            out.loss.backward()
            clipped += out.metrics["clip/fraction"]
        assert clipped > 0  # the example exercises clipping
        return [lin.weight.grad.clone(), lin.bias.grad.clone()]

    one = grads([[0, 2, 3, 5]])  # kept rows only
    micro = grads([[0], [2, 3], [5]])
    for a, b in zip(one, micro, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_two_sided_clip_delta():
    # One token each, old logp 0, logp ln 3 -> ratio 3; eps 0.2 -> clip(3) = 1.2. D = 1 (token_mean, 1 token).
    #   A = -1, no delta : -min(3 * -1, 1.2 * -1) = 3 ; gradient d/dlogp = -A * ratio = 3
    #   A = -1, delta 2  : -min(2 * -1, 1.2 * -1) = 2 ; the capped ratio is constant -> gradient 0
    #   A = +1, delta 2  : -min(2 * 1, 1.2 * 1) = -1.2 either way (the PPO clip already binds)
    def run(adv: float, delta: float | None):
        logp = torch.tensor([[math.log(3.0)]], requires_grad=True)
        cfg = PolicyLossConfig(aggregation="token_mean", clip_delta=delta)
        out = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), 1.0, cfg)
        out.loss.backward()
        return out.loss.item(), logp.grad.item(), out.metrics["clip/fraction"]

    assert run(-1.0, None) == pytest.approx((3.0, 3.0, 0.0))
    assert run(-1.0, 2.0) == pytest.approx((2.0, 0.0, 1.0))
    assert run(1.0, 2.0) == pytest.approx((-1.2, 0.0, 1.0))
    with pytest.raises(ValueError):
        PolicyLossConfig(clip_delta=1.0)


def test_bias_corrected_kl():
    # logp -1, old -1.5, ref -2: ratio = exp(0.5) = 1.6487213; k3 = exp(-1) + 1 - 1 = 0.3678794
    #   corrected KL = 1.6487213 * 0.3678794 = exp(-0.5) = 0.6065307; beta 0.1, A = 0 -> loss = 0.06065307
    #   f(l) = exp(l - old) * (exp(r - l) - (r - l) - 1);  f'(l) = ratio * k3 + ratio * (1 - exp(r - l))
    #        = ratio * (0.3678794 + 1 - 0.3678794) = ratio = 1.6487213 ; x beta 0.1 = 0.16487213
    logp = torch.tensor([[-1.0]], requires_grad=True)
    cfg = PolicyLossConfig(aggregation="token_mean", kl_beta=0.1, kl_bias_correction=True)
    out = policy_loss(logp, torch.tensor([[-1.5]]), torch.tensor([0.0]), torch.ones(1, 1), 1.0, cfg,
                      ref_logprobs=torch.tensor([[-2.0]]))
    out.loss.backward()
    assert out.metrics["kl/mean"] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.1 * math.exp(-0.5), rel=1e-6)
    assert logp.grad.item() == pytest.approx(0.1 * math.exp(0.5), rel=1e-5)
    plain = policy_loss(logp.detach(), torch.tensor([[-1.5]]), torch.tensor([0.0]), torch.ones(1, 1), 1.0,
                        PolicyLossConfig(aggregation="token_mean", kl_beta=0.1), ref_logprobs=torch.tensor([[-2.0]]))
    assert plain.metrics["kl/mean"] == pytest.approx(math.exp(-1.0), rel=1e-6)  # uncorrected k3
