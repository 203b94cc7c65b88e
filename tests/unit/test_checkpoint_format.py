"""The checkpoint format: safetensors shards for model and optimizer state, JSON for the rest, and a
round trip that gives back bitwise the same weights, optimizer state and RNG streams."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcadence.config import RLConfig
from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer
from rlcadence.run_state import versions_at
from rlcadence.trainer.checkpoint import (
    OPTIMIZER_INDEX,
    TrainerState,
    load_trainer_state,
    restore_rng,
    snapshot,
    write_snapshot,
)
from rlcadence.trainer.update import build_optimizer

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _trained(device: str, name: str = "adamw"):
    tok = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1), tok, seed=0).to(device)
    opt = build_optimizer(model, RLConfig(optimizer={"name": name, "momentum": 0.9 if name == "sgd" else 0.0}).optimizer)
    for _ in range(2):
        ids = torch.randint(4, len(tok), (3, 7), device=device)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, tok, opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_round_trip_is_bitwise(tmp_path, device, optimizer):
    model, tok, opt = _trained(device, optimizer)
    torch.manual_seed(123)
    random.seed(7)
    state = TrainerState(step=5, data_cursor=160, generator_version=3, ref_version=0)
    snap = snapshot(model, tok, state, opt)
    expected_torch, expected_py = torch.rand(4), random.random()  # what the RNGs give after the snapshot
    write_snapshot(tmp_path, snap, max_shard_bytes=2**30)

    loaded = load_trainer_state(tmp_path)
    assert (loaded.step, loaded.data_cursor, loaded.generator_version, loaded.ref_version) == (5, 160, 3, 0)
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path).to(device)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    opt2 = build_optimizer(fresh, RLConfig(optimizer={"name": optimizer}).optimizer)
    opt2.load_state_dict(loaded.optimizer)
    for s1, s2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        for key in s1:
            assert torch.equal(torch.as_tensor(s1[key]), torch.as_tensor(s2[key])), key
    restore_rng(loaded)
    assert torch.equal(torch.rand(4), expected_torch) and random.random() == expected_py


def test_shards_above_the_size_cap(tmp_path):
    model, tok, opt = _trained("cpu")
    snap = snapshot(model, tok, TrainerState(1, 0, 1, 0), opt)
    write_snapshot(tmp_path, snap, max_shard_bytes=40_000)  # the tiny model is ~0.2 MB: several shards
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert len(list(tmp_path.glob("optimizer-*-of-*.safetensors"))) > 1 and (tmp_path / OPTIMIZER_INDEX).exists()
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert load_trainer_state(tmp_path).optimizer["state"].keys() == opt.state_dict()["state"].keys()


def test_snapshot_does_not_alias_the_live_model(tmp_path):
    model, tok, opt = _trained("cpu")
    snap = snapshot(model, tok, TrainerState(1, 0, 1, 0), opt)
    before = {k: v.clone() for k, v in snap.weights.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the trainer moves on while the writer thread serialises
    assert all(torch.equal(before[k], snap.weights[k]) for k in before)


def test_weights_only_checkpoint_loads_as_a_model(tmp_path):
    model, tok, _opt = _trained("cpu")
    write_snapshot(tmp_path, snapshot(model, tok, None), max_shard_bytes=2**30)
    assert not list(tmp_path.glob("optimizer*")) and not (tmp_path / "trainer_state.json").exists()
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))


@pytest.mark.parametrize(("sync_every", "ref_sync_every", "start", "step", "expected"), [
    (1, "offline", TrainerState(4, 0, 4, 0), 6, (6, 0)),
    (3, "offline", TrainerState(4, 0, 3, 0), 5, (3, 0)),
    (3, "offline", TrainerState(4, 0, 3, 0), 6, (6, 0)),
    (3, 2, TrainerState(4, 0, 3, 4), 7, (6, 6)),
    ("offline", "offline", TrainerState(8, 0, 0, 0), 11, (0, 0)),
])
def test_versions_after_replay(sync_every, ref_sync_every, start, step, expected):
    cfg = RLConfig(sync_every=sync_every, ref_sync_every=ref_sync_every)
    assert versions_at(start, step, cfg) == expected
