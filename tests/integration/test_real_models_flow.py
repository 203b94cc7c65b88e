"""The RL flow on a real architecture with its real vocabulary: a random-init Qwen2 (V = 151,936), chat-
formatted dataset prompts with a system prompt, two GRPO steps on CPU; an over-long row skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from rlcadence.config import RLConfig
from rlcadence.environments.datasets import DatasetError
from rlcadence.flows.rl import rl
from tests.fixtures.random_models import qwen2_stopping  # noqa: F401 - fixture
from tests.integration.helpers import final_weights, small_config, sql

pytestmark = pytest.mark.slow

PROMPTS = ["1+1=", "say hi", "2+5=", "name a colour"]
SYSTEM = "Answer in one word."


def _dataset(tmp_path, long_row: bool):
    rows = [{"id": f"q{i}", "prompt": p, "gold": "x"} for i, p in enumerate(PROMPTS)]
    if long_row:
        rows.insert(2, {"id": "huge", "prompt": "x" * 200_000, "gold": "x"})
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(model, store, path, mode, **extra):
    env = [{"name": "chat", "kind": "dataset", "verifier": "tests.fixtures.verifiers:short_reply",
            "source": {"path": str(path), "id_column": "id", "system_prompt": SYSTEM, "on_bad_row": mode}}]
    return RLConfig.model_validate(small_config(
        model, store, environments=env, steps=2, prompts_per_step=2, group_size=4, eval_every=10,
        sampling={"max_new_tokens": 6}, optimizer={"lr": 1e-2, "warmup_steps": 0}, **extra))


def test_qwen2_real_vocab_chat_prompts_stop_at_im_end(prefect_server, tmp_path, qwen2_stopping, store):  # noqa: F811
    rl(_config(qwen2_stopping, store, _dataset(tmp_path, long_row=True), "skip", run_id="qwen2"))

    tok = AutoTokenizer.from_pretrained(qwen2_stopping)
    rows = sql(store, "SELECT prompt_id, prompt_token_ids, token_ids, finish_reason, completion_tokens FROM rollouts")
    assert len(rows) == 2 * 2 * 4
    for pid, prompt_ids, tokens, reason, n in rows:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPTS[int(pid[1:])]}]
        assert list(prompt_ids) == tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
        assert (reason == "stop") == (tokens[-1] == 151645), (reason, tokens)  # <|im_end|> ends a completion
        assert 151645 not in tokens[:-1] and (reason == "stop" or n == 6)
    reasons = {r[3] for r in rows}
    assert "stop" in reasons, "generation stops at <|im_end|>"

    # the 200,000-character row: skipped and counted, never sampled
    assert "huge" not in {r[0] for r in rows}
    [(row, reason)] = sql(store, "SELECT row, reason FROM rejected WHERE run_id = 'qwen2'")
    assert row == 3 and "max_prompt_tokens=250 (the default" in reason  # 256 positions - 6 new tokens

    before = load_file(str(qwen2_stopping / "model.safetensors"))
    after = final_weights(store, "qwen2")
    assert any(not (before[k] == after[k]).all() for k in before), "two GRPO steps changed the weights"


def test_over_long_prompt_in_fail_mode_stops_the_flow_before_the_run_row(prefect_server, tmp_path, qwen2_stopping, store):  # noqa: F811
    with pytest.raises(DatasetError, match=r"(?s)environment 'chat'.*line 3: prompt has \d+ tokens > max_prompt_tokens=250"):
        rl(_config(qwen2_stopping, store, _dataset(tmp_path, long_row=True), "fail", run_id="refused"))
    written = [p for p in Path(store).rglob("*") if p.is_file()] if Path(store).exists() else []
    assert written == [], "no run row, checkpoint or rollout before the prompts are checked"
