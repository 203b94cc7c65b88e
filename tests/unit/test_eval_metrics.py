"""Eval-set metrics against hand-computed values: pass@k (Chen et al.'s unbiased estimator), maj@k, mean@k,
length and truncation; answer keys normalised by Math-Verify."""

from __future__ import annotations

import math

import pytest

from rlcadence.eval_metrics import maj_at_k, majority_index, mean_at_k, pass_at_k, summarize


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # pass@1 = c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 0, 4, 0.0),  # no correct sample
        (3, 2, 2, 1.0),  # n - c = 1 < k: every 2-subset holds a correct one
        (4, 4, 1, 1.0),
        (200, 1, 100, 0.5),  # 1 - C(199,100)/C(200,100) = 1 - 100/200, far past float range of C(200,100)
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_form():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 5), (4, 1, 0), (4, 5, 1)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_at_k_leaves_out_missing_rewards():
    assert mean_at_k([1.0, 0.0, 0.5, 0.5]) == 0.5
    assert mean_at_k([1.0, math.nan, 0.0]) == 0.5
    assert math.isnan(mean_at_k([math.nan]))


def test_majority_vote():
    # "1/2" twice beats "3" once; the majority answer is correct
    assert maj_at_k(["1/2", "3", "1/2", None], [True, False, True, False]) == 1.0
    # a tie between "3" and "1/2" goes to the answer seen first ("3"), which is wrong
    assert majority_index(["3", "1/2", "1/2", "3"]) == 0
    assert maj_at_k(["3", "1/2", "1/2", "3"], [False, True, True, False]) == 0.0
    # no sample has an answer: nothing to vote for
    assert majority_index([None, None]) is None
    assert maj_at_k([None, None], [False, False]) == 0.0


def test_summarize_two_prompts_by_hand():
    rewards = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    keys = [["a", "b", "c", "a"], ["b", "b", "x", None]]
    lengths = [[2, 3, 4, 5], [6, 6, 6, 6]]
    truncated = [[False, False, False, True], [True, True, False, False]]
    out = summarize(rewards, keys, lengths, truncated, [1, 2, 4])
    # prompt 1: n=4, c=2 -> pass@1 1/2, pass@2 1 - C(2,2)/C(4,2) = 5/6, pass@4 1; prompt 2: c=0 -> 0
    assert out["pass_at_1"] == pytest.approx(0.25)
    assert out["pass_at_2"] == pytest.approx(5 / 12)
    assert out["pass_at_4"] == pytest.approx(0.5)
    assert out["maj_at_4"] == pytest.approx(0.5)  # prompt 1 votes "a" (correct), prompt 2 votes "b" (wrong)
    assert out["mean_at_4"] == pytest.approx(0.25)  # (2/4 + 0) / 2
    assert out["mean_length"] == pytest.approx(38 / 8)
    assert out["truncated_fraction"] == pytest.approx(3 / 8)
    assert out["n_prompts"] == 2.0


def test_summarize_non_verifiable_has_mean_score_only():
    out = summarize([[0.2, 0.4], [1.0, 0.6]], None, [[1, 1], [1, 1]], [[False] * 2] * 2, [1, 2])
    assert out["mean_at_2"] == pytest.approx(0.55)  # the mean reward-model / judge score
    assert not any(k.startswith(("pass_at", "maj_at")) for k in out)


def test_answer_keys_normalise_with_math_verify():
    from rlcadence.verifiers.answers import answer_keys

    keys = answer_keys(["so \\boxed{\\frac{1}{2}}", "The final answer is 0.5", "\\boxed{\\dfrac12}",
                        "357 ", "", "\\boxed{x+1}", "\\boxed{1+x}"])
    assert keys[0] == keys[1] == keys[2] == "1/2"
    assert keys[3] == "357"  # a plain answer (no box, no phrase) is its stripped text
    assert keys[4] is None
    assert keys[5] == keys[6]


def test_non_verifiable_eval_set_rows_and_summary(tmp_path):
    """A toy_pref (scored) eval set through evaluate_sets on a tiny random model: graded rewards, no
    correctness, no answer keys, and only the mean score in the summary."""
    from rlcadence.engines.hf import engine_from_model
    from rlcadence.environments.mix import open_environments
    from rlcadence.environments.spec import EnvironmentSpec
    from rlcadence.evaluation import evaluate_sets
    from rlcadence.models.config import TinyModelConfig
    from rlcadence.models.tiny import build_model, build_tokenizer

    path = tmp_path / "toy.jsonl"
    path.write_text('{"prompt": "len:3>"}\n{"prompt": "len:5>"}\n{"prompt": "len:2>"}\n')
    spec = EnvironmentSpec(name="toy", kind="toy_pref", eval_sets=[
        {"name": "toy_eval", "source": {"path": str(path)}, "k": 2, "batch_prompts": 2,
         "sampling": {"preset": "paper_a", "max_new_tokens": 5}}])
    tok = build_tokenizer()
    envs = open_environments([spec], 0, 1234, 3, 10, tok, training_rows=False)
    engine = engine_from_model(build_model(TinyModelConfig(hidden_size=32, intermediate_size=64), tok, 0).eval(), tok, 0)
    out = evaluate_sets(engine, envs, tok, run_seed=0, step=3, model="m", run_id="r")
    assert len(out.rows) == 6 and all(r["correct"] is None and r["answer_key"] is None for r in out.rows)
    assert {r["step"] for r in out.rows} == {3} and len({r["seed"] for r in out.rows}) == 2  # two engine calls
    mean = sum(r["reward"] for r in out.rows) / 6
    assert out.metrics["eval/toy_eval/mean_at_2"] == pytest.approx(mean)
    assert not any("pass_at" in k or "maj_at" in k for k in out.metrics)
