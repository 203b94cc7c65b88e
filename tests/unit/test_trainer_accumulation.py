"""Gradient accumulation and gradient filtering on a real (tiny) Llama, through the trainer's updates.

With plain SGD (no momentum, no clipping) the weight update is exactly -lr x gradient, so:
  * micro-batches of 2 rows must give the one-batch update (the loss normaliser is the whole batch's);
  * so must micro-batches cut by a token budget (rows sorted by length, each trimmed to its longest row);
  * filtering with ``normalize_by="kept"`` must give (all-rows normaliser / kept-rows normaliser) x the
    update with ``normalize_by="all"``, and "all" must equal no filtering when only A = 0 rows are dropped.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rlcadence.config import RLConfig
from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer
from rlcadence.objectives import loss_normalizer, masked_entropy, masked_token_logprobs
from rlcadence.trainer.update import (
    MicroBatching,
    build_optimizer,
    dpo_update,
    micro_batches,
    pack,
    policy_update,
    sft_update,
)

AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "token_sum_norm"]
MAX_LEN = 6  # completion length cap (token_sum_norm's normaliser)
M, G = 2, 4  # 2 prompts x 4 samples = 8 rows


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1), tok, seed=0)
    return model, tok


def _batch(tok, model):
    """8 rows of arithmetic prompts with completions of different lengths (1..6 tokens), and the
    model's own logprobs perturbed as the 'generator' logprobs, so some ratios fall outside the clip."""
    g = torch.Generator().manual_seed(0)
    prompts = ["12+345=", "7+88="]
    prompt_ids = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(G)]
    digits = tok("0123456789", add_special_tokens=False)["input_ids"]
    lengths = [1, 3, 6, 4, 2, 6, 5, 3]
    completion_ids = [[digits[int(i)] for i in torch.randint(0, 10, (n - 1,), generator=g)] + [tok.eos_token_id]
                      for n in lengths]
    batch = pack(prompt_ids, completion_ids, tok.pad_token_id)
    with torch.no_grad():
        logp = masked_token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                     batch.input_ids)
    noise = 0.3 * torch.randn(logp.shape, generator=g)
    old = [(logp[r] + noise[r])[batch.completion_mask[r] > 0].tolist() for r in range(len(batch))]
    return pack(prompt_ids, completion_ids, tok.pad_token_id, old), prompt_ids, completion_ids


def _cfg(aggregation="seq_mean_token_mean", micro=None, tau=None, normalize_by="kept", tokens=None, **extra) -> RLConfig:
    return RLConfig.model_validate({
        "prompts_per_step": M, "group_size": G, "micro_batch_size": micro, "max_tokens_per_micro_batch": tokens,
        "policy_loss": {"aggregation": aggregation},
        "filter": {"tau": tau, "normalize_by": normalize_by},
        "optimizer": {"name": "sgd", "lr": 0.1, "grad_clip": None, "warmup_steps": 0},
        **extra,
    })


def _update(tiny, fn) -> dict[str, torch.Tensor]:
    """Weight deltas of one update ``fn(model, optimizer)`` on a fresh copy of the tiny model."""
    model = copy.deepcopy(tiny[0])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt_cfg = _cfg().optimizer
    fn(model, build_optimizer(model, opt_cfg))
    return {k: v.detach() - before[k] for k, v in model.named_parameters()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], scale: float = 1.0):
    assert a.keys() == b.keys()
    biggest = max(float(d.abs().max()) for d in b.values())
    assert biggest > 1e-6, "the update is empty: nothing was tested"
    for name in a:
        torch.testing.assert_close(a[name], scale * b[name], rtol=1e-4, atol=1e-7 * max(1.0, scale), msg=name)


ADV = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0])  # prompt 2: all-equal rewards -> A = 0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("ppo", [{}, {"ppo_epochs": 2, "mini_batches": 2}], ids=["one-step", "ppo-2x2"])
def test_micro_batches_give_the_one_batch_update(tiny, aggregation, ppo):
    batch, *_ = _batch(tiny[1], tiny[0])
    kept = torch.ones(len(batch), dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -0.5, -0.5, -0.5])
    runs = {}
    for micro in (None, 2):
        cfg = _cfg(aggregation, micro, **ppo)
        runs[micro] = _update(tiny, lambda m, o, cfg=cfg: policy_update(m, o, batch, adv, kept, cfg,
                                                                          max_completion_len=MAX_LEN))
    _assert_same(runs[2], runs[None])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_with_kl_and_filter(tiny, aggregation):
    """KL to a (different) reference and a filtered batch accumulate exactly too."""
    batch, *_ = _batch(tiny[1], tiny[0])
    ref = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    kept = ADV.abs() > 0.1
    runs = {}
    for micro in (None, 2):
        cfg = _cfg(aggregation, micro, tau=0.1, policy_loss={"aggregation": aggregation, "kl_beta": 0.1})
        runs[micro] = _update(tiny, lambda m, o, cfg=cfg: policy_update(m, o, batch, ADV, kept, cfg, ref,
                                                                          max_completion_len=MAX_LEN))
    _assert_same(runs[2], runs[None])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_filter_normalize_by_scales_the_update(tiny, aggregation):
    batch, *_ = _batch(tiny[1], tiny[0])
    kept = ADV.abs() > 0.1  # rows 0-3 survive
    assert kept.tolist() == [True] * 4 + [False] * 4
    everything = torch.ones(len(batch), dtype=torch.bool)

    def run(cfg, mask):
        return _update(tiny, lambda m, o: policy_update(m, o, batch, ADV, mask, cfg, max_completion_len=MAX_LEN))

    by_kept = run(_cfg(aggregation, tau=0.1, normalize_by="kept"), kept)
    by_all = run(_cfg(aggregation, tau=0.1, normalize_by="all"), kept)
    unfiltered = run(_cfg(aggregation), everything)
    # dropped rows have A = 0 and no KL: they carry no gradient, so "all" == no filtering
    _assert_same(by_all, unfiltered)
    # "kept" divides by the kept rows' count: the update grows by D_all / D_kept
    d_all = loss_normalizer(batch.completion_mask, kept, aggregation, MAX_LEN, "all")
    d_kept = loss_normalizer(batch.completion_mask, kept, aggregation, MAX_LEN, "kept")
    expected = {"seq_mean_token_mean": 8 / 4, "token_sum_norm": 8 / 4,
                "token_mean": float(batch.completion_mask.sum() / batch.completion_mask[:4].sum())}[aggregation]
    assert d_all / d_kept == pytest.approx(expected)
    assert expected > 1
    _assert_same(by_kept, by_all, scale=expected)


def test_rows_backpropagated_counts_kept_rows_per_epoch(tiny):
    batch, *_ = _batch(tiny[1], tiny[0])
    kept = ADV.abs() > 0.1
    model = copy.deepcopy(tiny[0])
    cfg = _cfg(tau=0.1, ppo_epochs=3, micro=2)
    out = policy_update(model, build_optimizer(model, cfg.optimizer), batch, ADV, kept, cfg, max_completion_len=MAX_LEN)
    assert out["train/rows_backpropagated"] == 3 * 4
    # epochs 2 and 3 see weights moved by epoch 1: the ratio leaves 1 (and was != 1 already: noisy old logprobs)
    assert out["ratio/max"] > 1.0 and out["ratio/min"] < 1.0
    assert 0.0 < out["clip/fraction"] < 1.0


def test_sft_micro_batches_give_the_one_batch_update(tiny):
    _, prompt_ids, completion_ids = _batch(tiny[1], tiny[0])
    batch = pack(prompt_ids, completion_ids, tiny[1].pad_token_id)
    opt = _cfg().optimizer
    whole = _update(tiny, lambda m, o: sft_update(m, o, batch, opt))
    micro = _update(tiny, lambda m, o: sft_update(m, o, batch, opt, MicroBatching(rows=3)))
    _assert_same(micro, whole)


def test_dpo_micro_batches_give_the_one_batch_update(tiny):
    _, prompt_ids, completion_ids = _batch(tiny[1], tiny[0])
    pick = lambda idx: pack([prompt_ids[i] for i in idx], [completion_ids[i] for i in idx], tiny[1].pad_token_id)  # noqa: E731
    chosen, rejected = pick([0, 2, 4, 6]), pick([1, 3, 5, 7])
    ref = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    runs = {}
    for micro in (None, 2):
        cfg = _cfg(micro=micro, algorithm="dpo", dpo={"nll_weight": 1.0})
        runs[micro] = _update(tiny, lambda m, o, cfg=cfg: dpo_update(m, o, chosen, rejected, ref, cfg))
    _assert_same(runs[2], runs[None])


# Token budgets. The 8 rows are 8-token ("12+345=" with BOS) or 6-token ("7+88=") prompts plus completions
# of 1, 3, 6, 4, 2, 6, 5, 3 tokens: lengths 9, 11, 14, 12, 8, 12, 11, 9; the longest row is 14 tokens.
LENGTHS = [9, 11, 14, 12, 8, 12, 11, 9]
BUDGETS = [pytest.param({"tokens": 14}, id="14-tokens"), pytest.param({"tokens": 30, "micro": 2}, id="30-tokens-2-rows")]


def test_token_budget_cut_by_hand(tiny):
    batch, *_ = _batch(tiny[1], tiny[0])
    assert batch.lengths() == LENGTHS
    rows = torch.arange(8)
    cut = lambda **kw: [m.tolist() for m in micro_batches(rows, LENGTHS, MicroBatching(**kw))]  # noqa: E731
    # sorted by (length, index): r4:8 r0:9 r7:9 r1:11 r6:11 r3:12 r5:12 r2:14
    # budget 30: 8,9,9 -> 3 x 9 = 27; + r1 would be 4 x 11 = 44 -> cut; 11,11 (22) + r3 = 36 -> cut; 12,12; 14
    assert cut(tokens=30) == [[4, 0, 7], [1, 6], [3, 5], [2]]
    # with at most 2 rows as well
    assert cut(tokens=30, rows=2) == [[4, 0], [7, 1], [6, 3], [5, 2]]
    # 14 tokens: no two rows fit (2 x 8 = 16)
    assert cut(tokens=14) == [[4], [0], [7], [1], [6], [3], [5], [2]]
    # no budget: consecutive rows, as before
    assert cut(rows=3) == [[0, 1, 2], [3, 4, 5], [6, 7]] and cut() == [list(range(8))]
    # each micro-batch is trimmed to its own longest row
    mb = batch.micro(torch.tensor([4, 0, 7]), torch.device("cpu"))
    assert mb.input_ids.shape == (3, 9) and mb.completion_mask.shape == (3, 8)
    torch.testing.assert_close(mb.completion_mask, batch.completion_mask[[4, 0, 7], :8], rtol=0, atol=0)
    assert float(batch.completion_mask[[4, 0, 7], 8:].sum()) == 0.0


def test_a_row_longer_than_the_budget_fails_naming_both_numbers(tiny):
    batch, *_ = _batch(tiny[1], tiny[0])
    model = copy.deepcopy(tiny[0])
    cfg = _cfg(tokens=13)
    with pytest.raises(ValueError, match=r"a row of 14 tokens does not fit max_tokens_per_micro_batch=13"):
        policy_update(model, build_optimizer(model, cfg.optimizer), batch, ADV, torch.ones(8, dtype=torch.bool), cfg,
                      max_completion_len=MAX_LEN)


GRPO_BUDGETS = [
    *[pytest.param(agg, {}, {"tokens": 30}, id=f"one-step-{agg}-30-tokens") for agg in AGGREGATIONS],
    *[pytest.param(agg, {"ppo_epochs": 2, "mini_batches": 2}, {"tokens": 30, "micro": 2}, id=f"ppo-2x2-{agg}-30-tokens-2-rows")
      for agg in AGGREGATIONS],
    pytest.param("token_mean", {}, {"tokens": 14}, id="one-step-token_mean-14-tokens"),
]


@pytest.mark.parametrize(("aggregation", "ppo", "budget"), GRPO_BUDGETS)
def test_token_budget_gives_the_one_batch_update(tiny, aggregation, ppo, budget):
    batch, *_ = _batch(tiny[1], tiny[0])
    kept = torch.ones(len(batch), dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -0.5, -0.5, -0.5])
    run = lambda cfg: _update(tiny, lambda m, o: policy_update(m, o, batch, adv, kept, cfg, max_completion_len=MAX_LEN))  # noqa: E731
    _assert_same(run(_cfg(aggregation, **budget, **ppo)), run(_cfg(aggregation, **ppo)))


def test_token_budget_is_deterministic(tiny):
    batch, *_ = _batch(tiny[1], tiny[0])
    kept = torch.ones(len(batch), dtype=torch.bool)
    cfg = _cfg(tokens=30, ppo_epochs=2, mini_batches=2)
    a, b = (_update(tiny, lambda m, o: policy_update(m, o, batch, ADV, kept, cfg, max_completion_len=MAX_LEN))
            for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a), "the same budget must give bitwise the same update"


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_token_budget_with_kl_and_filter(tiny, aggregation):
    batch, *_ = _batch(tiny[1], tiny[0])
    ref = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    kept = ADV.abs() > 0.1
    runs = {}
    for tokens in (None, 24):
        cfg = _cfg(aggregation, tau=0.1, tokens=tokens, policy_loss={"aggregation": aggregation, "kl_beta": 0.1})
        runs[tokens] = _update(tiny, lambda m, o, cfg=cfg: policy_update(m, o, batch, ADV, kept, cfg, ref,
                                                                           max_completion_len=MAX_LEN))
    _assert_same(runs[24], runs[None])


def test_entropy_metric_is_the_token_mean_over_the_first_pass(tiny):
    """Cut or not, ``train/entropy`` is the mean next-token entropy over all completion tokens."""
    batch, *_ = _batch(tiny[1], tiny[0])
    kept = torch.ones(len(batch), dtype=torch.bool)
    with torch.no_grad():
        logits = tiny[0](input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = masked_entropy(logits[:, :-1], batch.completion_mask)
    for extra in ({}, {"tokens": 30}):
        model = copy.deepcopy(tiny[0])
        cfg = _cfg(**extra)
        out = policy_update(model, build_optimizer(model, cfg.optimizer), batch, ADV, kept, cfg, max_completion_len=MAX_LEN)
        assert out["train/entropy"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("budget", BUDGETS)
def test_sft_token_budget_gives_the_one_batch_update(tiny, budget):
    _, prompt_ids, completion_ids = _batch(tiny[1], tiny[0])
    batch = pack(prompt_ids, completion_ids, tiny[1].pad_token_id)
    opt = _cfg().optimizer
    plan = MicroBatching(rows=budget.get("micro"), tokens=budget["tokens"])
    whole = _update(tiny, lambda m, o: sft_update(m, o, batch, opt))
    cut = _update(tiny, lambda m, o: sft_update(m, o, batch, opt, plan))
    _assert_same(cut, whole)


@pytest.mark.parametrize("budget", BUDGETS)
def test_dpo_token_budget_gives_the_one_batch_update(tiny, budget):
    """Pairs (0,1) (2,3) (4,5) (6,7): pair lengths 11, 14, 12, 11 (the longer of the two rows)."""
    _, prompt_ids, completion_ids = _batch(tiny[1], tiny[0])
    pick = lambda idx: pack([prompt_ids[i] for i in idx], [completion_ids[i] for i in idx], tiny[1].pad_token_id)  # noqa: E731
    chosen, rejected = pick([0, 2, 4, 6]), pick([1, 3, 5, 7])
    ref = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    runs = {}
    for extra in ({}, budget):
        cfg = _cfg(algorithm="dpo", dpo={"nll_weight": 1.0}, mini_batches=2, **extra)
        runs[bool(extra)] = _update(tiny, lambda m, o, cfg=cfg: dpo_update(m, o, chosen, rejected, ref, cfg))
    _assert_same(runs[True], runs[False])


def test_truncated_is_that_never_binds_on_exact_logprobs_is_the_plain_update(tiny):
    """Engine log-probs equal to the trainer's: every IS weight is 1, the ratio's old log-prob is the same, so
    tis_cap changes nothing, and the agreement metric reads 0."""
    model, tok = tiny
    noisy, prompt_ids, completion_ids = _batch(tok, model)
    with torch.no_grad():
        exact = masked_token_logprobs(model(input_ids=noisy.input_ids, attention_mask=noisy.attention_mask).logits,
                                      noisy.input_ids)
    old = [exact[r][noisy.completion_mask[r] > 0].tolist() for r in range(len(noisy))]
    batch = pack(prompt_ids, completion_ids, tok.pad_token_id, old)
    kept = torch.ones(len(batch), dtype=torch.bool)
    out = {}
    plain = _update(tiny, lambda m, o: out.setdefault("plain", policy_update(m, o, batch, ADV, kept, _cfg())))
    capped = _update(tiny, lambda m, o: out.setdefault("tis", policy_update(
        m, o, batch, ADV, kept, _cfg(policy_loss={"tis_cap": 1e9}))))
    _assert_same(capped, plain)
    for key in ("plain", "tis"):
        assert out[key]["logprob/engine_trainer_abs_diff_max"] < 1e-5


def test_truncated_is_accumulates_over_micro_batches_and_measures_the_gap(tiny):
    """With noisy engine log-probs (|noise| ~ 0.3) and a binding cap, micro-batches of 2 rows give the one-batch
    update, and the agreement metric is the mean |noise| over completion tokens."""
    model, tok = tiny
    batch, *_ = _batch(tok, model)
    kept = torch.ones(len(batch), dtype=torch.bool)
    with torch.no_grad():
        trainer = masked_token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                        batch.input_ids)
    gap = (trainer - batch.old_logprobs).abs()[batch.completion_mask > 0]
    runs, metrics = {}, {}
    for micro in (None, 2):
        cfg = _cfg(micro=micro, policy_loss={"tis_cap": 1.2})
        runs[micro] = _update(tiny, lambda m, o, cfg=cfg, micro=micro: metrics.setdefault(
            micro, policy_update(m, o, batch, ADV, kept, cfg)))
    _assert_same(runs[2], runs[None])
    assert metrics[None]["logprob/engine_trainer_abs_diff_mean"] == pytest.approx(float(gap.mean()), rel=1e-4)
    assert metrics[None]["logprob/engine_trainer_abs_diff_max"] == pytest.approx(float(gap.max()), rel=1e-4)
    assert 0 < metrics[None]["tis/weight_mean"] < 1.2
