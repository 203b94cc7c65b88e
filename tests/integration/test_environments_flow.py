"""Mixed environments in one run, and user datasets with bad rows (fail vs skip-and-record)."""

from __future__ import annotations

import json

import pytest

from rlcadence.cli import main
from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from tests.integration.helpers import small_config, sql, write_config

pytestmark = pytest.mark.slow


def test_verifiable_and_non_verifiable_environments_in_one_run(prefect_server, seed_model, store):
    envs = [{"name": "arithmetic", "kind": "arithmetic", "weight": 1.0},
             {"name": "toy_pref", "kind": "toy_pref", "weight": 1.0}]
    rl(RLConfig.model_validate(small_config(seed_model, store, run_id="mix", environments=envs, steps=2)))

    per_env = sql(store, "SELECT environment, count(*), count(DISTINCT prompt_id), min(reward), max(reward) "
                          "FROM rollouts GROUP BY environment ORDER BY environment")
    assert [(t, n, p) for t, n, p, _, _ in per_env] == [("arithmetic", 2 * 4 * 4, 2 * 4), ("toy_pref", 2 * 4 * 4, 2 * 4)]
    toy_rewards = sql(store, "SELECT count(DISTINCT reward) FROM rollouts WHERE environment = 'toy_pref'")[0][0]
    assert toy_rewards > 2, "the non-verifiable environment's scorer grades, it does not just pass/fail"
    # GRPO groups never cross environments: every prompt's samples share one environment
    assert sql(store, "SELECT max(n) FROM (SELECT count(DISTINCT environment) n FROM rollouts GROUP BY step, prompt_id)")[0][0] == 1
    cols = {r[0] for r in sql(store, "SELECT column_name FROM (DESCRIBE SELECT * FROM metrics)")}
    assert {"reward_mean_arithmetic", "reward_mean_toy_pref", "reward_accuracy_arithmetic",
            "eval_accuracy_arithmetic", "eval_accuracy_toy_pref"} <= cols
    assert "reward_accuracy_toy_pref" not in cols


def _dataset(tmp_path):
    good = [{"id": f"q{i}", "prompt": f"{i}+{i}=", "gold": str(2 * i)} for i in range(1, 5)]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]), json.dumps({"id": "x", "gold": "1"}),
             json.dumps(good[2]), json.dumps({"id": "y", "prompt": 12, "gold": "3"}), json.dumps(good[3]),
             json.dumps({"id": "z", "prompt": "", "gold": "0"})]
    path = tmp_path / "sums.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [g["id"] for g in good]


def _dataset_environment(path, mode):
    return [{"name": "sums", "kind": "dataset", "verifier": "exact_match",
             "source": {"path": str(path), "id_column": "id", "on_bad_row": mode}}]


def test_bad_rows_fail_naming_file_and_lines(tmp_path, seed_model, capsys):
    path, _ = _dataset(tmp_path)
    store = tmp_path / "store"
    cfg = write_config(tmp_path, small_config(seed_model, str(store), environments=_dataset_environment(path, "fail")))
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    for line in (2, 4, 6, 8):
        assert f"line {line}" in err or f"row {line}" in err, err
    assert not store.exists()


def test_missing_dataset_file_is_named(tmp_path, seed_model, capsys):
    missing = tmp_path / "nope.jsonl"
    cfg = write_config(tmp_path, small_config(seed_model, str(tmp_path / "store"), environments=_dataset_environment(missing, "fail")))
    assert main(["run", "--config", str(cfg)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_bad_rows_skipped_are_recorded_and_good_rows_all_used(prefect_server, tmp_path, seed_model, store):
    path, good_ids = _dataset(tmp_path)
    rl(RLConfig.model_validate(small_config(seed_model, store, run_id="skip", steps=1, prompts_per_step=4,
                                            environments=_dataset_environment(path, "skip"))))
    used = sorted(r[0] for r in sql(store, "SELECT DISTINCT prompt_id FROM rollouts"))
    assert used == sorted(good_ids)
    rejected = sql(store, "SELECT row, reason FROM rejected WHERE run_id = 'skip' ORDER BY row")
    assert [r[0] for r in rejected] == [2, 4, 6, 8]
    assert all(r[1] for r in rejected)


def test_llm_judge_environment_scores_and_records_unparseable(prefect_server, tmp_path, seed_model, store):
    """The seed LM judges a dataset environment: its replies are parsed into rewards or recorded as unparseable."""
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+{i + 1}="}) + "\n" for i in range(8)))
    envs = [{"name": "chat", "kind": "dataset", "source": {"path": str(path)},
              "judge": {"model": str(seed_model), "template": "{prompt}{completion}+1=", "max_score": 2000,
                        "max_new_tokens": 5}}]
    rl(RLConfig.model_validate(small_config(seed_model, store, run_id="judged", environments=envs, steps=1)))
    rows = sql(store, "SELECT reward, verifier_detail FROM rollouts WHERE run_id = 'judged'")
    assert len(rows) == 8 * 4
    kinds = {d.split(":")[0] for _, d in rows}
    assert kinds <= {"judge", "unparseable", "out_of_range"} and "judge" in kinds, kinds
    for reward, detail in rows:
        assert 0.0 <= reward <= 1.0
        if not detail.startswith("judge"):
            assert reward == 0.0


def test_missing_judge_model_is_named_before_any_work(tmp_path, seed_model, capsys):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": "hi"}) + "\n")
    envs = [{"name": "chat", "kind": "dataset", "source": {"path": str(path)}, "judge": {"model": "/no/such/judge"}}]
    cfg = write_config(tmp_path, small_config(seed_model, str(tmp_path / "store"), environments=envs))
    assert main(["run", "--config", str(cfg)]) == 2
    assert "/no/such/judge" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
