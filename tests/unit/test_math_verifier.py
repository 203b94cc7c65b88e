"""MathVerifier with the real Math-Verify (no mocks), its killable pool, and a user verifier that hangs.

The pool-backed verifiers are module-scoped: a worker takes ~1-2 s to spawn and import SymPy.
"""

import os
import pickle
import threading
import time

import pytest

from rlcadence.verifiers.math import MathVerifier, extract_final_answer, last_boxed
from rlcadence.verifiers.registry import get_verifier

# (completion, gold, expected detail); reward is 1.0 exactly when the detail is "correct".
CASES = [
    # integers and signs
    ("\\boxed{42}", "42", "correct"),
    ("\\boxed{-3}", "-3", "correct"),
    ("\\boxed{-3}", "3", "wrong"),
    ("\\boxed{1,000}", "1000", "correct"),
    ("\\boxed{1.0}", "1", "correct"),
    # fractions: 1/2 vs \frac{1}{2} vs 0.5 vs \dfrac
    ("\\boxed{\\frac{1}{2}}", "1/2", "correct"),
    ("\\boxed{0.5}", "\\frac{1}{2}", "correct"),
    ("\\boxed{\\dfrac{1}{2}}", "0.5", "correct"),
    ("\\boxed{\\frac12}", "1/2", "correct"),
    ("\\boxed{1/2}", "\\frac{1}{2}", "correct"),
    ("\\boxed{-\\frac{1}{3}}", "-1/3", "correct"),
    ("\\boxed{0.333}", "1/3", "wrong"),
    # which box: the last one, nested boxes unwrapped, gold given boxed or in $...$
    ("\\boxed{\\boxed{7}}", "7", "correct"),
    ("first \\boxed{3} then \\boxed{5}", "5", "correct"),
    ("first \\boxed{3} then \\boxed{5}", "3", "wrong"),
    ("\\boxed{2}", "\\boxed{2}", "correct"),
    ("\\boxed{\\frac{1}{2}}", "$\\frac{1}{2}$", "correct"),
    # units, percent, degrees, currency
    ("\\boxed{5 \\text{ cm}}", "5", "correct"),
    ("\\boxed{5 cm}", "5", "correct"),
    ("\\boxed{50\\%}", "50", "correct"),
    ("\\boxed{0.5}", "50\\%", "correct"),
    ("\\boxed{90^\\circ}", "90", "correct"),
    ("\\boxed{\\$5}", "5", "correct"),
    # intervals, sets, tuples
    ("\\boxed{[1,2)}", "[1,2)", "correct"),
    ("\\boxed{(1,2)}", "[1,2]", "wrong"),
    ("\\boxed{\\{2,1\\}}", "\\{1,2\\}", "correct"),
    ("\\boxed{\\{1,3\\}}", "\\{1,2\\}", "wrong"),
    ("\\boxed{(1, 2)}", "(1,2)", "correct"),
    # roots, pi, powers, scientific notation, expressions, equations, infinity
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", "correct"),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", "correct"),
    ("\\boxed{\\pi}", "\\pi", "correct"),
    ("\\boxed{2\\pi}", "2\\pi", "correct"),
    ("\\boxed{3.14}", "\\pi", "wrong"),
    ("\\boxed{2^{10}}", "1024", "correct"),
    ("\\boxed{1.5e3}", "1500", "correct"),
    ("\\boxed{1.5 \\times 10^{3}}", "1500", "correct"),
    ("\\boxed{1500}", "1.5 \\times 10^3", "correct"),
    ("\\boxed{1+x^2}", "x^2+1", "correct"),
    ("\\boxed{x = 3}", "3", "correct"),
    ("\\boxed{\\infty}", "\\infty", "correct"),
    # the "final answer is" phrase (paper A's template) when there is no box
    ("The final answer is $\\frac{3}{4}$.", "0.75", "correct"),
    ("The final answer is 12.", "12", "correct"),
    ("so the final answer is 13", "12", "wrong"),
    # no answer, empty, malformed
    ("I think it's 12", "12", "no_answer"),
    ("", "12", "no_answer"),
    ("\\boxed{}", "12", "no_answer"),
    ("\\boxed{\\frac{1}{2}", "1/2", "no_answer"),  # truncated: the box never closes
    ("\\boxed{x^{2}", "1", "no_answer"),
    ("\\boxed{\\frac{1}{}}", "1/2", "wrong"),
    ("\\boxed{\\\\\\\\}", "1", "parse_error"),  # only LaTeX line breaks inside
    ("\\boxed{\\text{hello}}", "1", "wrong"),
    ("\\boxed{3}", "", "parse_error"),  # no gold to check against
]


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=5.0, workers=2) as v:
        yield v


@pytest.mark.parametrize(("completion", "gold", "detail"), CASES)
def test_answer_forms(verifier, completion, gold, detail):
    [result] = verifier([completion], [gold])
    assert result.detail == detail
    assert result.reward == (1.0 if detail == "correct" else 0.0)


def test_batch_in_order_and_in_process_agrees(verifier):
    completions, golds = [c for c, _, _ in CASES], [g for _, g, _ in CASES]
    pooled = verifier(completions, golds)
    assert [r.detail for r in pooled] == [d for _, _, d in CASES]
    some = slice(None, None, 4)  # in-process parsing starts with cold caches: a subset keeps this quick
    assert MathVerifier(use_pool=False)(completions[some], golds[some]) == pooled[some]


def test_extraction():
    assert last_boxed("a \\boxed{1} b \\boxed{ \\boxed{ 7 } } c") == "7"
    assert last_boxed("\\boxed{\\boxed{5} and \\boxed{6}}") == "\\boxed{5} and \\boxed{6}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"  # escaped braces do not close the box
    assert last_boxed("no box") is None
    assert extract_final_answer("The Final Answer is: 3.5.") == "3.5"
    assert extract_final_answer("The final answer is $\\boxed{4}$. Also, the final answer is 5") == "4"


def test_works_from_a_non_main_thread(verifier):
    # Math-Verify's signal.alarm raises off the main thread; the pool and the in-process mode must not.
    out = {}

    def run():
        out["pool"] = verifier(["\\boxed{\\frac{1}{2}}", "\\boxed{3}"], ["0.5", "4"])
        out["inproc"] = MathVerifier(use_pool=False)(["\\boxed{\\frac{1}{2}}"], ["0.5"])

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=60)
    assert [r.detail for r in out["pool"]] == ["correct", "wrong"]
    assert out["inproc"][0].detail == "correct"


HUGE = "1+" * 500_000 + "1"  # 1 MB; Math-Verify parses it for minutes
NESTED = "\\frac{1}{" * 10_000 + "2" + "}" * 10_000  # Math-Verify never returns on this
BACKSLASHES = "\\" * 1_000_000


def test_adversarial_inputs_cut_by_length(verifier):
    # Default max_answer_chars: huge extracted answers are refused without being parsed.
    completions = [
        f"\\boxed{{{HUGE}}}",
        f"\\boxed{{{NESTED}}}",
        BACKSLASHES,
        f"\\boxed{{{BACKSLASHES}}}",
        HUGE,
    ]
    start = time.monotonic()
    results = verifier(completions, ["1"] * len(completions))
    elapsed = time.monotonic() - start
    assert [r.detail for r in results] == [
        "parse_error",
        "parse_error",
        "no_answer",
        "parse_error",
        "no_answer",
    ]
    assert elapsed < verifier.timeout_s + 2.0


def test_adversarial_inputs_killed_at_deadline():
    # Without the length cut, the hung answers reach Math-Verify: each worker is killed at its deadline,
    # replaced, and the batch (and the next one) still returns.
    timeout_s = 1.0
    with MathVerifier(timeout_s=timeout_s, workers=2, max_answer_chars=None) as v:
        v.pool.start()  # workers up before timing
        completions = [
            f"\\boxed{{{HUGE}}}",
            f"\\boxed{{{NESTED}}}",
            f"\\boxed{{{BACKSLASHES[:10_000]}}}",
            "\\boxed{2}",
        ]
        start = time.monotonic()
        results = v(completions, ["1", "1", "1", "2"])
        elapsed = time.monotonic() - start
        assert [r.detail for r in results[:2]] == ["timeout", "timeout"]
        assert results[2].detail in {"parse_error", "wrong", "timeout"}
        assert results[3].detail == "correct"
        # two hung answers run in parallel on two workers; replacements take ~1-3 s to start on 2 busy cores
        assert elapsed < 2 * timeout_s + 15.0
        assert v.pool.restarts >= 2
        assert [r.detail for r in v(["\\boxed{1/2}", "\\boxed{7}"], ["0.5", "8"])] == ["correct", "wrong"]


def test_pickles_without_its_processes(verifier):
    copy = pickle.loads(pickle.dumps(verifier))
    assert copy._pool is None and copy.timeout_s == verifier.timeout_s


# A user verifier by dotted path (this module), run in worker processes with a per-call limit.


def sleepy_verifier(completions, golds):
    if completions[0] == "hang":
        time.sleep(3600)
    if completions[0] == "crash":
        os._exit(3)
    return [1.0 if c == g else 0.0 for c, g in zip(completions, golds, strict=True)]


def test_user_verifier_that_hangs_times_out_and_next_batch_works():
    v = get_verifier(f"{__name__}:sleepy_verifier", timeout_s=1.0, workers=2)
    try:
        start = time.monotonic()
        # equal golds go to one worker as one chunk: after the kill, "a" and "b" run on another worker
        results = v(["a", "hang", "a", "b"], ["a", "a", "a", "a"])
        assert time.monotonic() - start < 1.0 + 10.0
        assert [r.detail for r in results] == ["ok", "timeout", "ok", "ok"]
        assert [r.reward for r in results] == [1.0, 0.0, 1.0, 0.0]
        results = v(["crash", "a"], ["x", "a"])
        assert results[0].detail == "error: worker crashed" and results[1].reward == 1.0
        assert [r.reward for r in v(["a", "b"], ["a", "b"])] == [1.0, 1.0]
    finally:
        v.close()
