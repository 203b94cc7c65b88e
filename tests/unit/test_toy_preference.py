import string

import pytest

from rlcadence.environments.toy_preference import (
    ENVIRONMENT_NAME,
    ToyLengthScorer,
    ToyPreferenceEnvironment,
    length_score,
)


@pytest.mark.parametrize(
    ("completion", "target", "score"),
    [
        ("abcde", 5, 1.0),  # exact length
        ("abcd", 5, 0.8),  # 1 - 1/5
        ("abcdef", 5, 0.8),
        ("  ab  ", 5, 0.4),  # surrounding whitespace does not count: 1 - 3/5
        ("", 5, 0.0),
        ("x" * 12, 5, 0.0),  # 1 - 7/5 < 0, clipped
        ("7", 1, 1.0),
        ("78", 1, 0.0),
    ],
)
def test_length_score(completion, target, score):
    assert length_score(completion, target) == pytest.approx(score)


def test_scorer_reads_target_from_prompt_and_is_graded():
    scorer = ToyLengthScorer()
    results = scorer(
        ["len:3>", "len:3>", "len:4>", "chat wrapper <user>len:2><assistant>", "hello"],
        ["123", "12", "1", "ab", "x"],
    )
    assert [r.reward for r in results] == pytest.approx([1.0, 2 / 3, 0.25, 1.0, 0.0])
    assert results[1].detail == "len 2 target 3"
    assert results[4].detail == "unparseable prompt"


def test_task_rows_are_seeded_random_access_and_printable():
    task = ToyPreferenceEnvironment(seed=3, max_target=6)
    rows = task.train_prompts(50)
    assert rows == ToyPreferenceEnvironment(seed=3, max_target=6).train_prompts(50)
    assert task.train_prompts(10, start=20) == rows[20:30]  # a resumed run draws the same prompts
    assert rows != ToyPreferenceEnvironment(seed=4, max_target=6).train_prompts(50)
    assert {r.environment for r in rows} == {ENVIRONMENT_NAME}
    assert {int(r.gold) for r in rows} == set(range(1, 7))
    assert all(r.prompt == f"len:{r.gold}>" and set(r.prompt) <= set(string.printable) for r in rows)
    heldout = task.heldout_prompts(20)
    assert len({r.prompt_id for r in rows + heldout}) == 70
    # a perfect reply scores 1 on every row
    perfect = ["z" * int(r.gold) for r in heldout]
    assert all(r.reward == 1.0 for r in task.scorer([r.prompt for r in heldout], perfect))


def test_bad_range():
    with pytest.raises(ValueError):
        ToyPreferenceEnvironment(min_target=0)
