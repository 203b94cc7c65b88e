"""The default max_prompt_tokens: the model's context minus the completion budget, checked on the engine's ids."""

from __future__ import annotations

import json

import pytest

from rlcadence.config import RLConfig
from rlcadence.environments.datasets import DatasetError, PromptSource, load_prompts
from rlcadence.models.tiny import build_tokenizer
from rlcadence.preflight import check_environments, default_max_prompt_tokens, max_positions


def test_default_limit_is_max_positions_minus_max_new_tokens(tmp_path):
    assert default_max_prompt_tokens(RLConfig()) == 64 - 6  # the embedded model: 64 positions, 6 new tokens
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "max_position_embeddings": 32768}))
    assert max_positions(tmp_path) == 32768
    cfg = RLConfig(model=str(tmp_path), sampling={"max_new_tokens": 1024})
    assert default_max_prompt_tokens(cfg, tmp_path) == 32768 - 1024
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096}}))
    assert max_positions(tmp_path) == 4096  # multimodal configs nest it


def test_no_room_for_a_prompt_is_refused_naming_both_numbers():
    with pytest.raises(DatasetError, match="max_new_tokens=64 leaves no room.*max_position_embeddings=64"):
        default_max_prompt_tokens(RLConfig(sampling={"max_new_tokens": 64}))


def _rows(tmp_path, n_chars: list[int]):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": "7" * n, "gold": "7"}) + "\n" for n in n_chars))
    return path


def test_default_limit_counts_bos_fail_and_skip_modes(tmp_path):
    tok = build_tokenizer()
    path = _rows(tmp_path, [57, 58, 3])  # BOS + 57 characters = 58 tokens: fits; BOS + 58 = 59: too long
    with pytest.raises(DatasetError, match=r"environment 'sums'.*\n  line 2: prompt has 59 tokens > max_prompt_tokens=58"):
        load_prompts(PromptSource(path=str(path), environment="sums", template="{prompt}"), tok, 58)
    loaded = load_prompts(PromptSource(path=str(path), template="{prompt}", on_bad_row="skip"), tok, 58)
    assert [len(r.prompt) for r in loaded.rows] == [57, 3]
    assert [(r.row, r.reason.split(" (")[0]) for r in loaded.rejected] == [(2, "prompt has 59 tokens > max_prompt_tokens=58")]
    # an explicit max_prompt_tokens wins over the model's default
    assert len(load_prompts(PromptSource(path=str(path), template="{prompt}", max_prompt_tokens=100), tok, 58).rows) == 3


def test_preflight_checks_lengths_for_the_embedded_model_before_it_is_built(tmp_path):
    env = {"name": "sums", "kind": "dataset", "verifier": "exact_match",
           "source": {"path": str(_rows(tmp_path, [3, 200])), "template": "{prompt}"}}
    with pytest.raises(DatasetError, match="line 2: prompt has 201 tokens > max_prompt_tokens=58"):
        check_environments(RLConfig(environments=[env], store=str(tmp_path / "store")))
    assert not (tmp_path / "store").exists()
