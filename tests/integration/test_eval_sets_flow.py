"""Eval sets end to end: a run with a dataset environment and a JSONL eval set writes `evals` rows every
eval_every steps with pass@k and maj@k in metrics; `rlcadence eval RUN@STEP` reproduces those rows exactly
(CPU, same seed) from a stored checkpoint and from a replay; bad eval input is refused before any work."""

from __future__ import annotations

import json
import math
import random

import pytest

from rlcadence.cli import main
from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from tests.integration.helpers import small_config, sql, write_config

pytestmark = pytest.mark.slow

K = 4
ROW_COLUMNS = ("model, eval_set, environment, prompt_id, sample_index, prompt, gold, completion, completion_tokens, "
               "finish_reason, truncated, reward, correct, verifier_detail, answer_key, seed, temperature, top_p")


def _sums(path, n: int, seed: int):
    rng = random.Random(seed)
    pairs = [(rng.randrange(100), rng.randrange(100)) for _ in range(n)]
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "gold": str(a + b)}) + "\n" for a, b in pairs))
    return path


def _environments(tmp_path, **eval_set):
    spec = {"name": "sums_eval", "source": {"path": str(_sums(tmp_path / "eval.jsonl", 6, 1))}, "k": K,
            "sampling": {"preset": "paper_a", "max_new_tokens": 6}, "pass_at": [1, 2, 4], "batch_prompts": 4}
    return [{"name": "arithmetic", "kind": "arithmetic"},
            {"name": "sums", "kind": "dataset", "verifier": "tests.fixtures.verifiers:first_digit",
             "source": {"path": str(_sums(tmp_path / "train.jsonl", 40, 0))}, "eval_sets": [spec | eval_set]}]


def _rows(store: str, run_id: str, step: int) -> list[tuple]:
    return sql(store, f"SELECT {ROW_COLUMNS} FROM evals WHERE run_id = '{run_id}' AND step = {step} "
                      "ORDER BY prompt_id, sample_index")


def test_eval_sets_in_a_run_and_reproduced_by_rlcadence_eval(prefect_server, tmp_path, seed_model, store, capsys):
    cfg = RLConfig.model_validate(small_config(seed_model, store, run_id="evals", environments=_environments(tmp_path)))
    rl(cfg)

    # every eval_every (2) steps, and before the first: 6 prompts x k samples, at T=0.6 / top-p 0.9
    counts = sql(store, "SELECT step, count(*), count(DISTINCT prompt_id), min(temperature), max(top_p) "
                        "FROM evals WHERE run_id = 'evals' GROUP BY step ORDER BY step")
    assert counts == [(0, 6 * K, 6, 0.6, 0.9), (2, 6 * K, 6, 0.6, 0.9), (4, 6 * K, 6, 0.6, 0.9)]
    # the summary is in the metrics row of the step whose update produced the policy, and agrees with the rows
    m = sql(store, "SELECT step, eval_sums_eval_pass_at_1, eval_sums_eval_pass_at_4, eval_sums_eval_maj_at_4, "
                   "eval_sums_eval_mean_at_4, eval_sums_eval_truncated_fraction, eval_accuracy FROM metrics "
                   "WHERE run_id = 'evals' AND eval_sums_eval_pass_at_1 IS NOT NULL ORDER BY step")
    assert [r[0] for r in m] == [1, 3]
    by_rows = sql(store, "SELECT step, avg(correct::DOUBLE), avg(reward), avg((finish_reason = 'length')::DOUBLE) "
                         "FROM evals WHERE run_id = 'evals' AND step > 0 GROUP BY step ORDER BY step")
    anyc = sql(store, "SELECT step, avg(c) FROM (SELECT step, prompt_id, bool_or(correct)::DOUBLE c FROM evals "
                      "WHERE run_id = 'evals' AND step > 0 GROUP BY ALL) GROUP BY step ORDER BY step")
    for (_, p1, p4, maj, mean, trunc, acc), (_, c, r, t), (_, any_correct) in zip(m, by_rows, anyc, strict=True):
        assert p1 == pytest.approx(c) and mean == pytest.approx(r) and trunc == pytest.approx(t)
        assert p4 == pytest.approx(any_correct)  # pass@n with n samples: the prompt has a correct one
        assert 0.0 <= maj <= p4 and acc is not None and not math.isnan(acc)
    assert max(r[2] for r in m) > max(r[1] for r in m) > 0, m  # some correct samples: the checks above bite
    # the main job's held-out evaluation is untouched: greedy, its own split, same figure as without eval sets
    from rlcadence.run_state import RunState
    from rlcadence.tasks.evaluate import evaluate

    plain = cfg.model_copy(update={"environments": [cfg.environments[0]]})
    with RunState(plain, "evals") as run:
        assert evaluate.fn(run, 4)["eval/accuracy"] == m[-1][-1]

    # standalone: step 4 has a checkpoint, step 2 is rebuilt from checkpoint 0 by replay; rows are identical
    from rlcadence.storage.checkpoints import checkpoint_steps, has_weights
    from rlcadence.storage.stores import open_location

    assert 4 in checkpoint_steps(open_location(store), "evals")
    assert not has_weights(open_location(store), "evals", 2)
    for step in (4, 2):
        assert main(["eval", f"evals@{step}", "--store", store]) == 0
        out = capsys.readouterr().out
        eval_id = out.split("evals/run_id=")[1].split("/")[0]
        assert eval_id != "evals"
        assert _rows(store, eval_id, step) == _rows(store, "evals", step)
    summary = sql(store, f"SELECT model, eval_sums_eval_pass_at_1, eval_sums_eval_maj_at_4 FROM metrics "
                         f"WHERE run_id = '{eval_id}' AND step = 2")
    assert summary == [("run:evals@2", m[0][1], m[0][3])]
    # a different seed samples differently: the equality above is not vacuous
    assert main(["eval", "evals@2", "--store", store, "--set", "seed=7", "--eval-id", "seed7"]) == 0
    assert [r[7] for r in _rows(store, "seed7", 2)] != [r[7] for r in _rows(store, "evals", 2)]

    # any model directory: the eval sets come from a config file (an eval-only dataset environment: no training file)
    envs = _environments(tmp_path)
    del envs[1]["source"]
    config = write_config(tmp_path, {"environments": envs}, "evals.json")
    assert main(["eval", str(seed_model), "--config", str(config), "--store", store, "--eval-id", "seedmodel"]) == 0
    seed_rows = _rows(store, "seedmodel", 0)
    assert len(seed_rows) == 6 * K and {r[0] for r in seed_rows} == {str(seed_model.resolve())}
    # the run's step 0 is the same seed model with the same seed: the same samples
    assert [r[1:] for r in seed_rows] == [r[1:] for r in _rows(store, "evals", 0)]


def test_bad_eval_input_is_refused_before_any_work(tmp_path, seed_model, capsys):
    store = tmp_path / "store"
    nogold = tmp_path / "nogold.jsonl"
    nogold.write_text(json.dumps({"prompt": "1+1=", "gold": "2"}) + "\n" + json.dumps({"prompt": "2+2="}) + "\n")
    cases = [({"source": {"path": str(nogold)}}, [str(nogold), "line 2", "'gold'"]),
             ({"k": 0}, ["eval_sets.0.k"]),
             ({"k": 2, "pass_at": [4]}, ["pass_at [4] exceeds k=2"])]
    for i, (change, named) in enumerate(cases):
        run_cfg = write_config(tmp_path, small_config(seed_model, str(store), environments=_environments(tmp_path, **change)),
                               f"run{i}.json")
        assert main(["run", "--config", str(run_cfg)]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in named), err
        eval_cfg = write_config(tmp_path, {"environments": _environments(tmp_path, **change)}, f"eval{i}.json")
        assert main(["eval", str(seed_model), "--config", str(eval_cfg), "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in named), err
        assert "Traceback" not in err
    assert not store.exists(), "nothing may be written on refused input"
    # unknown run, a step past the run, an unknown eval set: one line each
    assert main(["eval", "nosuchrun@3", "--store", str(store)]) == 2
    assert "no run 'nosuchrun'" in capsys.readouterr().err
    good = write_config(tmp_path, {"environments": _environments(tmp_path)}, "good.json")
    assert main(["eval", str(seed_model), "--config", str(good), "--set", "nope", "--store", str(store)]) == 2
    assert "unknown eval set(s) ['nope']" in capsys.readouterr().err
    assert not store.exists()
