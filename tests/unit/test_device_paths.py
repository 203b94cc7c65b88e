"""Every device path, on the CPU here and on CUDA where it exists (the ``gpu`` twin of each test, run by
scripts/gpu-check.sh): the run state places the policy, reference and generator on their devices, the
engine samples there, an update there matches the CPU's, and ``device=cuda`` without CUDA is refused."""

from __future__ import annotations

import copy

import pytest
import torch

from rlcadence.config import RLConfig
from rlcadence.devices import autocast, resolve_device
from rlcadence.engines.base import SamplingParams
from rlcadence.engines.hf import TransformersEngine
from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer, save_model
from rlcadence.run_state import RunState
from rlcadence.trainer.checkpoint import TrainerState
from rlcadence.trainer.update import build_optimizer, pack, policy_update

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2), tok, seed=0)
    path = tmp_path_factory.mktemp("tiny")
    save_model(model, tok, path)
    return model, tok, path


def _rows(tok):
    g = torch.Generator().manual_seed(0)
    prompts = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in ["12+345=", "7+88="] for _ in range(4)]
    digits = tok("0123456789", add_special_tokens=False)["input_ids"]
    completions = [[digits[int(i)] for i in torch.randint(0, 10, (n,), generator=g)] + [tok.eos_token_id]
                   for n in [1, 3, 5, 2, 4, 5, 3, 1]]
    return prompts, completions


@pytest.mark.parametrize("device", DEVICES)
def test_engine_samples_on_the_device_like_the_cpu(tiny, device):
    _model, tok, path = tiny
    prompts, _ = _rows(tok)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    ref = TransformersEngine(path).generate(prompts[::4], 2, greedy)
    eng = TransformersEngine(path, device=device)
    assert next(eng.model.parameters()).device.type == device
    got = eng.generate(prompts[::4], 2, greedy)
    for g_ref, g_dev in zip(ref, got, strict=True):
        for a, b in zip(g_ref, g_dev, strict=True):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4
    sampled = eng.generate(prompts[::4], 3, SamplingParams(temperature=1.0, max_new_tokens=6, seed=3))
    again = eng.generate(prompts[::4], 3, SamplingParams(temperature=1.0, max_new_tokens=6, seed=3))
    assert [[c.token_ids for c in g] for g in sampled] == [[c.token_ids for c in g] for g in again]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", [False, True])
def test_update_on_the_device_matches_the_cpu(tiny, device, bf16):
    model, tok, _path = tiny
    prompts, completions = _rows(tok)
    batch = pack(prompts, completions, tok.pad_token_id)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.25, -0.25])
    kept = torch.ones(8, dtype=torch.bool)
    cfg = RLConfig(prompts_per_step=2, group_size=4, bf16_autocast=bf16, max_tokens_per_micro_batch=40,
                   optimizer={"name": "sgd", "lr": 0.1, "grad_clip": None, "warmup_steps": 0})
    results = {}
    for dev in ("cpu", device):
        m = copy.deepcopy(model).to(dev)
        policy_update(m, build_optimizer(m, cfg.optimizer), batch, adv, kept, cfg)
        results[dev] = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    tol = 5e-3 if (bf16 and device == "cuda") else 1e-5  # bf16 autocast applies on CUDA only
    for name, ref in results["cpu"].items():
        delta_ref = ref - model.state_dict()[name]
        delta = results[device][name] - model.state_dict()[name]
        assert torch.allclose(delta, delta_ref, atol=tol * max(1.0, float(delta_ref.abs().max()))), name


@pytest.mark.parametrize("device", DEVICES)
def test_run_state_places_every_model_on_its_device(tiny, tmp_path, device):
    model, tok, _path = tiny
    cfg = RLConfig(store=str(tmp_path / "store"), device=device, policy_loss={"kl_beta": 0.1})
    with RunState(cfg, "placed") as run:
        run.save_checkpoint(model, tok, TrainerState(0, 0, 0, 0), wait=True)
        policy = run.policy_at(0)
        assert next(policy.model.parameters()).device.type == device
        assert next(run.reference_at(0).parameters()).device.type == device
        assert not any(p.requires_grad for p in run.ref_model.parameters()) and not run.ref_model.training
        engine = run.generator_at(0)
        assert next(engine.model.parameters()).device.type == device
        assert engine.model.dtype == (torch.bfloat16 if device == "cuda" else torch.float32)


def test_autocast_is_a_no_op_on_the_cpu():
    with autocast(torch.device("cpu")):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("field", ["device", "generator_device"])
def test_cuda_without_cuda_is_refused_naming_the_field(field):
    with pytest.raises(ValueError, match=field) as err:
        RLConfig(**{field: "cuda"})
    assert "no CUDA device" in str(err.value)
    assert resolve_device("auto").type == "cpu"
