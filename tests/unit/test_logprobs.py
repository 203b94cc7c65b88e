"""The chunked LM head against the full-logits path, on real (random-init) Llama, Qwen2 and Qwen3 models.

The reference is what the trainer did before: ``masked_token_logprobs(model(...).logits.float(), ids)``,
which holds [N, T, V] float32 logits. The chunked path must give the same log-probs, entropy and
parameter gradients, for chunk sizes that split the scored tokens unevenly, with a real vocabulary
(Qwen2's 151,936) so the vocabulary dimension is exercised.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from rlcadence.config import RLConfig
from rlcadence.objectives import masked_entropy, masked_token_logprobs
from rlcadence.trainer.logprobs import split_causal_lm, token_logprobs
from rlcadence.trainer.update import prepare_for_training

QWEN_VOCAB = 151_936
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 64}


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=99, tie_word_embeddings=True, **SMALL))


def _qwen2():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=QWEN_VOCAB, tie_word_embeddings=True, **SMALL))


def _qwen3():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=QWEN_VOCAB, tie_word_embeddings=False, head_dim=8, **SMALL))


MODELS = {"llama": _llama, "qwen2-151936": _qwen2, "qwen3-151936": _qwen3}


def _inputs(vocab: int):
    """3 right-padded rows of lengths 7, 4, 6; completion targets from position 2 (row 1: from 1)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 7), generator=g)  # [N, T]
    lengths = [7, 4, 6]
    attn = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 6)  # [N, T-1]
    for r, (n, start) in enumerate(zip(lengths, [2, 1, 2], strict=True)):
        attn[r, :n] = 1
        mask[r, start : n - 1] = 1.0
    weights = torch.randn(3, 6, generator=g)  # a loss that weighs every token differently
    return ids, attn, mask, weights


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


# 14 scored tokens: chunks of 1, 4 (uneven: 4+4+4+2), 5 and 1024 (one chunk)
CASES = [("llama", 1), ("llama", 4), ("llama", 1024), ("qwen2-151936", 4), ("qwen2-151936", 1024), ("qwen3-151936", 5)]


@pytest.mark.parametrize(("arch", "chunk"), CASES)
def test_chunked_head_matches_full_logits_in_values_and_gradients(arch, chunk):
    model = MODELS[arch]()
    ids, attn, mask, w = _inputs(model.config.vocab_size)

    full_logits = model(input_ids=ids, attention_mask=attn).logits.float()  # [N, T, V]
    old = masked_token_logprobs(full_logits, ids) * mask  # [N, T-1]
    old_grads = _grads(model, (old * w).sum())

    new, entropy = token_logprobs(model, ids, attn, mask, chunk, entropy=True)
    assert new.shape == old.shape and new.dtype == torch.float32
    torch.testing.assert_close(new, old.detach(), rtol=1e-5, atol=1e-5)
    assert bool((new[mask == 0] == 0).all()), "positions off the mask are 0"
    new_grads = _grads(model, (new * w).sum())
    assert new_grads.keys() == old_grads.keys()
    for name, g in old_grads.items():  # fp32 sums in another order: tolerance relative to the tensor's scale
        torch.testing.assert_close(new_grads[name], g, rtol=1e-4, atol=2e-5 * float(g.abs().max()), msg=name)
    # entropy from the same chunks == the full-logits entropy over the masked positions
    n = int(mask.sum())
    assert float(entropy.sum()) / n == pytest.approx(masked_entropy(full_logits.detach()[:, :-1], mask), rel=1e-5)


def test_no_grad_path_and_empty_mask():
    model = _llama()
    ids, attn, mask, _ = _inputs(99)
    with torch.no_grad():
        lp, ent = token_logprobs(model, ids, attn, mask, 2)
        ref = masked_token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids) * mask
    assert ent is None and not lp.requires_grad
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-5)
    empty, _ = token_logprobs(model, ids, attn, torch.zeros_like(mask), 2)
    assert bool((empty == 0).all())
    empty.sum().backward()  # a batch with nothing to score still back-propagates (a zero loss)


def test_backward_keeps_no_vocabulary_sized_tensor():
    """Outside the checkpointed chunks nothing of size [tokens, V] is saved for backward: the
    largest saved tensor is far below one chunk's logits (chunk x V floats)."""
    model = _qwen2()
    ids, attn, mask, w = _inputs(QWEN_VOCAB)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, _ = token_logprobs(model, ids, attn, mask, chunk_tokens=4)
    (lp * w).sum().backward()
    vocab_params = QWEN_VOCAB * 32  # the tied embedding / head weight itself is saved (it is a parameter)
    assert max(saved) <= vocab_params
    assert sorted(saved)[-2] < QWEN_VOCAB, "a [tokens, V] activation was kept for backward"
    # the full path keeps [N, T, V] logits
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        masked_token_logprobs(model(input_ids=ids, attention_mask=attn).logits.float(), ids)
    assert max(saved) >= 3 * 6 * QWEN_VOCAB


def test_models_that_cannot_be_split_fail_naming_the_class():
    with pytest.raises(TypeError, match="Linear: chunked log-probs need"):
        split_causal_lm(torch.nn.Linear(2, 2))
    model = _llama()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(TypeError, match="LlamaForCausalLM: config.final_logit_softcapping=30.0"):
        split_causal_lm(model)


def test_activation_checkpointing_gives_the_same_gradients():
    plain = _qwen2()
    ckpt = prepare_for_training(copy.deepcopy(plain), RLConfig(activation_checkpointing=True))
    assert ckpt.model.gradient_checkpointing and not plain.model.gradient_checkpointing
    ids, attn, mask, w = _inputs(QWEN_VOCAB)
    grads = []
    for model in (plain, ckpt):
        model.train()
        lp, _ = token_logprobs(model, ids, attn, mask, 4)
        grads.append(_grads(model, (lp * w).sum()))
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6 * float(g.abs().max()), msg=name)
    assert prepare_for_training(plain, RLConfig()) is plain and not plain.model.gradient_checkpointing
