import math

import pytest

from rlcadence.verifiers.base import VerifierResult
from rlcadence.verifiers.math import MathVerifier
from rlcadence.verifiers.registry import (
    FunctionVerifier,
    get_verifier,
    load_function,
    register_verifier,
)
from rlcadence.verifiers.simple import ExactMatchVerifier, NumericVerifier


def float_verifier(completions, golds):
    return [float(c == g) for c, g in zip(completions, golds, strict=True)]


def result_verifier(completions, golds):
    return [VerifierResult(0.5, "half") for _ in completions]


def wrong_length_verifier(completions, golds):
    return [1.0]


def raising_verifier(completions, golds):
    raise RuntimeError("boom")


NOT_CALLABLE = 3


def test_builtins_with_kwargs():
    v = get_verifier("math", timeout_s=2.0, workers=1)
    assert isinstance(v, MathVerifier) and v.timeout_s == 2.0 and v._pool is None  # no process until used
    assert isinstance(get_verifier("exact_match", case_sensitive=True), ExactMatchVerifier)
    assert isinstance(get_verifier("numeric"), NumericVerifier)


def test_register_verifier():
    register_verifier("always_one_test", lambda: lambda c, g: [VerifierResult(1.0, "ok")] * len(c))
    assert get_verifier("always_one_test")(["x"], ["y"]) == [VerifierResult(1.0, "ok")]
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("always_one_test", ExactMatchVerifier)
    register_verifier("always_one_test", ExactMatchVerifier, overwrite=True)
    assert isinstance(get_verifier("always_one_test"), ExactMatchVerifier)


@pytest.mark.parametrize("sep", [":", "."])
def test_dotted_path_in_process_wraps_floats(sep):
    v = get_verifier(f"{__name__}{sep}float_verifier", use_pool=False)
    assert isinstance(v, FunctionVerifier)
    assert v(["a", "b"], ["a", "c"]) == [VerifierResult(1.0, "ok"), VerifierResult(0.0, "ok")]
    assert get_verifier(f"{__name__}:result_verifier", use_pool=False)(["a"], ["b"]) == [
        VerifierResult(0.5, "half")
    ]


def test_bad_return_values_raise_in_process():
    with pytest.raises(TypeError, match="wrong_length_verifier.*2 results"):
        get_verifier(f"{__name__}:wrong_length_verifier", use_pool=False)(["a", "b"], ["a", "b"])


def test_dotted_path_in_pool_reports_errors_per_item():
    v = get_verifier(f"{__name__}:raising_verifier", timeout_s=5.0, workers=1)
    try:
        [r] = v(["a"], ["a"])
        assert r.reward == 0.0 and r.detail == "error: RuntimeError: boom"
    finally:
        v.close()


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("no_such_pkg.mod:fn", "cannot import verifier 'no_such_pkg.mod:fn'.*no_such_pkg.mod"),
        (f"{__name__}:missing", f"cannot import verifier '{__name__}:missing'.*no attribute 'missing'"),
        ("os.path.no_such_function", "cannot import verifier 'os.path.no_such_function'"),
    ],
)
def test_import_errors_name_the_path(path, match):
    with pytest.raises(ImportError, match=match):
        get_verifier(path)


def test_other_errors():
    with pytest.raises(TypeError, match="NOT_CALLABLE"):
        load_function(f"{__name__}:NOT_CALLABLE")
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        get_verifier("nope")
    with pytest.raises(ValueError, match="not of the form"):
        load_function("module:")


def none_verifier(completions, golds):
    return [None if c == "?" else 1.0 for c in completions]


def test_a_none_reward_is_nan_with_its_detail():
    [a, b] = get_verifier(f"{__name__}:none_verifier", use_pool=False)(["?", "x"], ["1", "1"])
    assert math.isnan(a.reward) and a.detail == "no reward (None)" and b == VerifierResult(1.0, "ok")
