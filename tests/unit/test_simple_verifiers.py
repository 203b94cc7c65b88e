import pytest

from rlcadence.verifiers.simple import ExactMatchVerifier, NumericVerifier, last_number


def details(results):
    return [r.detail for r in results]


def test_exact_match_prefers_the_final_answer_then_the_whole_completion():
    v = ExactMatchVerifier()
    results = v(
        ["  Paris \n", "it is \\boxed{paris}", "The final answer is PARIS.", "London", "", "   "],
        ["paris"] * 6,
    )
    assert details(results) == ["correct", "correct", "correct", "wrong", "no_answer", "no_answer"]
    assert [r.reward for r in results] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_exact_match_options():
    assert details(ExactMatchVerifier(case_sensitive=True)(["Paris", "paris"], ["paris", "paris"])) == [
        "wrong",
        "correct",
    ]
    assert details(ExactMatchVerifier(strip=False)([" paris", "paris"], ["paris", "paris"])) == [
        "wrong",
        "correct",
    ]


def test_exact_match_lengths_must_agree():
    with pytest.raises(ValueError):
        ExactMatchVerifier()(["a", "b"], ["a"])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", 12.0),
        ("-3.5", -3.5),
        ("1,234,567.25 dollars", 1234567.25),
        ("about 50%", 50.0),
        ("50\\%", 50.0),
        ("2.5e3", 2500.0),
        (".5", 0.5),
        ("first 3, then 4.", 4.0),  # the last number; the sentence's period is not a decimal point
        ("x2", None),  # a digit glued to a letter is not a number
        ("no digits", None),
    ],
)
def test_last_number(text, value):
    assert last_number(text) == value


def test_numeric_verifier():
    v = NumericVerifier()
    completions = [
        "so 7+5 = 12",
        "The answer is 1,000.",
        "\\boxed{12} (checked in 3 steps)",  # the box wins over the last number of the text
        "12.0000000001",  # within rel_tol 1e-6
        "12.01",
        "no idea",
        "50%",
    ]
    golds = ["12", "1000", "12", "12", "12", "12", "50"]
    assert details(v(completions, golds)) == [
        "correct",
        "correct",
        "correct",
        "correct",
        "wrong",
        "no_answer",
        "correct",
    ]
    assert details(v(["12"], ["twelve"])) == ["parse_error"]
    assert details(NumericVerifier(abs_tol=0.1)(["12.05"], ["12"])) == ["correct"]
    # 0 vs tiny: rel_tol alone never accepts around zero, abs_tol does
    assert details(NumericVerifier(rel_tol=1e-6, abs_tol=0.0)(["0.0000001"], ["0"])) == ["wrong"]
    assert details(NumericVerifier()(["-0"], ["0"])) == ["correct"]
