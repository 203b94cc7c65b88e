"""Verifiers by name: the builtins, names registered at run time, and user functions by dotted path.

A config names its verifier with one string: ``"math"``, ``"exact_match"``, ``"numeric"``, a name
added with :func:`register_verifier`, or a path to a user function ``"pkg.module:function"`` (or
``"pkg.module.function"``) with the signature ``(completions, golds) -> list[VerifierResult | float]``.

User functions run in a :class:`~rlcadence.verifiers.math.DeadlinePool` by default, one
(completion, gold) pair per call (``fn([completion], [gold])``; pairs with the same gold go to the same
worker process, so module-level caches help), with a per-call wall-clock limit:
a call that hangs scores 0 with detail ``"timeout"``, one that raises scores 0 with
``"error: <Type>: <message>"``, and the next batch runs as usual. The worker imports the function by
its path, so it must live in an importable module (not a notebook cell or a lambda).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

from rlcadence.verifiers.base import Verifier, VerifierResult
from rlcadence.verifiers.math import DeadlinePool, MathVerifier
from rlcadence.verifiers.simple import ExactMatchVerifier, NumericVerifier

log = logging.getLogger(__name__)

_FACTORIES: dict[str, Callable[..., Verifier]] = {
    "math": MathVerifier,
    "exact_match": ExactMatchVerifier,
    "numeric": NumericVerifier,
}


def register_verifier(name: str, factory: Callable[..., Verifier], overwrite: bool = False) -> None:
    """Make ``get_verifier(name, **kwargs)`` return ``factory(**kwargs)``."""
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"verifier {name!r} is already registered (pass overwrite=True to replace it)")
    _FACTORIES[name] = factory


def get_verifier(name_or_path: str, **kwargs: Any) -> Verifier:
    """A builtin or registered verifier by name, else a :class:`FunctionVerifier` over a dotted path.

    ``kwargs`` go to the factory (e.g. ``get_verifier("math", timeout_s=2.0)``), or to
    :class:`FunctionVerifier` for a path (``timeout_s``, ``workers``, ``use_pool``).
    """
    if name_or_path in _FACTORIES:
        return _FACTORIES[name_or_path](**kwargs)
    if "." not in name_or_path and ":" not in name_or_path:
        known = ", ".join(sorted(_FACTORIES))
        raise ValueError(
            f"unknown verifier {name_or_path!r}: use one of {known} or a path 'pkg.module:function'"
        )
    return FunctionVerifier(name_or_path, **kwargs)


@functools.lru_cache(maxsize=64)
def load_function(path: str) -> Callable:
    """Import ``pkg.module:function`` or ``pkg.module.function``; errors name the path."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"verifier path {path!r} is not of the form 'pkg.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"cannot import verifier {path!r}: module {module_name!r} not importable ({e})"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ImportError(
            f"cannot import verifier {path!r}: module {module_name!r} has no attribute {attr!r}"
        )
    if not callable(fn):
        raise TypeError(f"verifier {path!r} is a {type(fn).__name__}, not a function")
    return fn


def _as_results(values: Any, n: int, path: str) -> list[VerifierResult]:
    """User return values -> VerifierResults (a float becomes ``VerifierResult(float, "ok")``)."""
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise TypeError(f"verifier {path!r} must return a list of {n} results, got {got}")
    out = []
    for v in values:
        if isinstance(v, VerifierResult):
            out.append(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(VerifierResult(float(v), "ok"))
        elif v is None:  # no reward: NaN, left out of the group statistics with advantage 0
            out.append(VerifierResult(float("nan"), "no reward (None)"))
        else:
            raise TypeError(
                f"verifier {path!r} returned a {type(v).__name__}; expected VerifierResult or float"
            )
    return out


def call_user_one(path: str, completion: str, gold: str) -> VerifierResult:
    """Worker side: one (completion, gold) pair through the user function."""
    return _as_results(load_function(path)([completion], [gold]), 1, path)[0]


class FunctionVerifier:
    """A user function ``(completions, golds) -> list[VerifierResult | float]`` as a :class:`Verifier`.

    ``use_pool=True``: each pair runs in a worker process with a ``timeout_s`` limit (see the module
    docstring). ``use_pool=False``: the whole batch in one in-process call, no limit, errors raise.
    """

    def __init__(self, path: str, timeout_s: float = 5.0, workers: int = 2, use_pool: bool = True):
        self.fn = load_function(path)  # fail now, in the caller, with the path in the message
        self.path, self.timeout_s, self.workers, self.use_pool = path, timeout_s, workers, use_pool
        self._pool: DeadlinePool | None = None

    def __call__(self, completions: list[str], golds: list[str]) -> list[VerifierResult]:
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        if not self.use_pool:
            return _as_results(self.fn(list(completions), list(golds)), len(completions), self.path)
        if not completions:
            return []
        if self._pool is None:
            self._pool = DeadlinePool(self.workers, self.timeout_s)
        args = [(self.path, c, g) for c, g in zip(completions, golds, strict=True)]
        out = []
        for status, value in self._pool.run(f"{__name__}:call_user_one", args, keys=list(golds)):
            if status == "ok":
                out.append(value)
            elif status == "timeout":
                out.append(VerifierResult(0.0, "timeout"))
            else:
                detail = f"error: {value}" if status == "error" else "error: worker crashed"
                log.warning("verifier %s: %s", self.path, detail)
                out.append(VerifierResult(0.0, detail[:200]))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "fn": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fn = load_function(self.path)
