"""Gradient accumulation and gradient filtering on a real (tiny) Llama, through the trainer's updates.

With plain SGD (no momentum, no clipping) the weight update is exactly -lr x gradient, so:
  * micro-batches of 2 rows must give the one-batch update (the loss normaliser is the whole batch's);
  * filtering with ``normalize_by="kept"`` must give (all-rows normaliser / kept-rows normaliser) x the
    update with ``normalize_by="all"``, and "all" must equal no filtering when only A = 0 rows are dropped.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rlcadence.config import RLConfig
from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer
from rlcadence.objectives import loss_normalizer
from rlcadence.trainer.update import (
    build_optimizer,
    dpo_update,
    forward_logprobs,
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
        logp, _ = forward_logprobs(model, batch)
    noise = 0.3 * torch.randn(logp.shape, generator=g)
    old = [(logp[r] + noise[r])[batch.completion_mask[r] > 0].tolist() for r in range(len(batch))]
    return pack(prompt_ids, completion_ids, tok.pad_token_id, old), prompt_ids, completion_ids


def _cfg(aggregation="seq_mean_token_mean", micro=None, tau=None, normalize_by="kept", **extra) -> RLConfig:
    return RLConfig.model_validate({
        "prompts_per_step": M, "group_size": G, "micro_batch_size": micro,
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
    whole = _update(tiny, lambda m, o: sft_update(m, o, batch, opt, None))
    micro = _update(tiny, lambda m, o: sft_update(m, o, batch, opt, 3))
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
