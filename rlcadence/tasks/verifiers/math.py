"""Math answers checked with Math-Verify, in worker processes that can be killed.

The reward is binary, as in paper A (arXiv 2506.21495, "binary Math-Verify reward") and paper B
(arXiv 2505.17218, "last \\boxed{} checked"): 1.0 when the completion's final answer equals the gold
answer under ``math_verify.verify(parse(gold), parse(pred))`` (gold first), else 0.0.

Why a pool of our own. Math-Verify's own timeouts use ``signal.alarm``, which only works on the main
thread (Prefect runs tasks in threads), and only interrupts Python bytecode: a pathological input
(10,000 nested ``\\frac``, a megabyte of ``1+1+...``) can keep SymPy or the ANTLR parser busy for
minutes. ``concurrent.futures.ProcessPoolExecutor`` cannot cancel a running call, so one hung answer
would hold a worker, and the stage, forever. :class:`DeadlinePool` keeps ``workers`` long-lived
``spawn`` processes, each with its own pipe; it sends one answer at a time to an idle worker with a
wall-clock deadline, and a worker still busy at its deadline is SIGKILLed and replaced. The answer
scores 0 with detail ``"timeout"`` and the other workers keep going, so a batch always returns in
about ``n_hung * timeout_s / workers`` plus normal work. One answer per message costs a pipe round
trip (~0.1 ms) against ~1 ms of Math-Verify work, and it is what makes the limit per answer.
``spawn`` (not ``fork``) because the parent may hold threads and torch state that ``fork`` would copy
half-locked; as with any ``spawn`` pool, a script that uses it needs an ``if __name__ == "__main__"``
guard.

Details (exactly these strings): ``"correct"``, ``"wrong"``, ``"no_answer"`` (no ``\\boxed{}`` and no
"final answer is" phrase, or an empty one), ``"timeout"``, ``"parse_error"`` (gold or answer not
parseable, answer longer than ``max_answer_chars``, or the worker crashed).
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing as mp
import re
import signal
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from rlcadence.tasks.verifiers.base import VerifierResult

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- extraction

_BOXED_TOKENS = re.compile(r"\\boxed\s*\{|\\[{}]|[{}]")  # a \boxed opening, an escaped brace (ignored), a brace
_PHRASE = re.compile(r"final answer is\b[ \t]*:?[ \t]*([^\n]*)", re.IGNORECASE)
_SCIENTIFIC = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)\s*")


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (balanced braces); ``\\boxed{\\boxed{5}}`` gives ``5``.

    One linear pass over brace tokens (a 1 MB completion takes well under a second); a box whose
    closing brace never comes (a truncated completion) is ignored, so an earlier complete one wins.
    """
    stack: list[int | None] = []  # per open brace: the content start of a \boxed, or None for a plain group
    box_at: dict[int, int] = {}  # position of a "\boxed" token -> start of its content
    ends: dict[int, int] = {}  # content start -> content end, for complete boxes
    best: tuple[int, int] | None = None
    for m in _BOXED_TOKENS.finditer(text):
        tok = m.group()
        if tok.startswith("\\boxed"):
            box_at[m.start()] = m.end()
            stack.append(m.end())
        elif tok == "{":
            stack.append(None)
        elif tok == "}" and stack:
            start = stack.pop()
            if start is not None:
                ends[start] = m.start()
                best = (start, m.start())  # closes last, so an outer box beats the boxes inside it
    if best is None:
        return None
    start, end = best
    while True:  # unwrap a box whose whole content is another box
        first = start + len(text[start:end]) - len(text[start:end].lstrip())
        inner = box_at.get(first)
        if inner is None or inner not in ends or text[ends[inner] + 1 : end].strip():
            return text[start:end].strip()
        start, end = inner, ends[inner]


def final_answer_phrase(text: str) -> str | None:
    """The rest of the line after the last "final answer is", without ``$`` delimiters or a final period."""
    matches = list(_PHRASE.finditer(text))
    if not matches:
        return None
    answer = matches[-1].group(1).strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def extract_final_answer(text: str) -> str | None:
    """The last ``\\boxed{...}``, else the "final answer is X" phrase, else ``None``."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else final_answer_phrase(text)


def _as_math(answer: str) -> str:
    """Put a bare answer in ``$...$`` so Math-Verify's LaTeX extractor reads it (``\\dfrac12`` bare fails).

    ``1.5e3`` becomes ``1.5\\times 10^{3}``: Math-Verify reads ``e`` as Euler's number otherwise.
    """
    sci = _SCIENTIFIC.fullmatch(answer)
    if sci:
        answer = f"{sci.group(1)}\\times 10^{{{sci.group(2)}}}"
    if any(d in answer for d in ("$", "\\boxed", "\\(", "\\[")):
        return answer
    return f"${answer}$"


# ------------------------------------------------------------------------------------------- checking


def verify_answer(answer: str, gold: str, timeout_s: int | None = None) -> str:
    """Detail for one extracted answer against its gold: "correct", "wrong", "timeout" or "parse_error".

    ``timeout_s`` is Math-Verify's own ``signal.alarm`` limit (main thread only); pool workers pass
    ``None`` because the pool enforces the limit by killing the process.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = parse(_as_math(gold), parsing_timeout=timeout_s, raise_on_error=True)
        pred_parsed = parse(_as_math(answer), parsing_timeout=timeout_s, raise_on_error=True)
        if not gold_parsed or not pred_parsed:
            return "parse_error"
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s, raise_on_error=True)
    except TimeoutException:
        return "timeout"
    except Exception:  # Math-Verify raises many types on odd LaTeX; any of them means "not parseable"
        return "parse_error"
    return "correct" if ok else "wrong"


def warm_up_math_verify() -> None:
    """Worker start: import SymPy/ANTLR and build the parser once, so no answer pays for it."""
    for name in ("math_verify.parser", "math_verify.grader"):
        # "Timeout is disabled" is expected here: the pool is the timeout.
        logging.getLogger(name).setLevel(logging.ERROR)
    verify_answer("1", "1")


# ------------------------------------------------------------------------------------------------ pool


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _worker_main(conn: Connection, init: str | None) -> None:
    """Worker loop: receive ``(fn_ref, args)``, reply ``("ok", value)`` or ``("error", text)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    try:
        if init:
            _resolve(init)()
    except BaseException as e:
        conn.send(("init_error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    fns: dict[str, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        ref, args = msg
        try:
            fn = fns.get(ref) or fns.setdefault(ref, _resolve(ref))
            reply = ("ok", fn(*args))
        except Exception as e:
            reply = ("error", f"{type(e).__name__}: {e}"[:500])
        try:
            conn.send(reply)
        except Exception as e:  # an unpicklable return value
            conn.send(("error", f"{type(e).__name__}: {e}"[:500]))


@dataclass
class _Worker:
    proc: Any  # multiprocessing Process
    conn: Connection
    started: float
    ready: bool = False
    job: int | None = None  # index of the item being worked on
    deadline: float = math.inf


def _kill(w: _Worker) -> None:
    if w.proc.is_alive():
        w.proc.kill()
    w.proc.join(timeout=2)
    w.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        try:
            w.conn.send(None)
        except OSError:
            pass
    for w in workers:
        w.proc.join(timeout=0.5)
        _kill(w)
    workers.clear()


class DeadlinePool:
    """``workers`` spawned processes running ``module:function`` calls, each call with its own deadline.

    ``run(fn_ref, arg_list)`` returns one ``(status, value)`` per item, in order: ``("ok", result)``,
    ``("error", "Type: message")`` (the function raised), ``("timeout", None)`` (killed at its
    deadline) or ``("crashed", None)`` (the worker died). Thread-safe (calls are serialised); usable
    from any thread. Workers start lazily and live until :meth:`close` or garbage collection.
    """

    def __init__(self, workers: int, timeout_s: float, init: str | None = None, start_timeout_s: float = 120.0):
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"need workers >= 1 and timeout_s > 0, got {workers=} {timeout_s=}")
        self.workers, self.timeout_s, self.init, self.start_timeout_s = workers, timeout_s, init, start_timeout_s
        self.restarts = 0  # workers killed or lost so far (a health metric)
        self._ctx = mp.get_context("spawn")
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)

    def close(self) -> None:
        with self._lock:
            _shutdown(self._pool)

    def run(self, fn_ref: str, arg_list: list[tuple]) -> list[tuple[str, Any]]:
        with self._lock:
            return self._run(fn_ref, arg_list)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.init), daemon=True, name="rlcadence-verify")
        proc.start()
        child.close()
        return _Worker(proc=proc, conn=parent, started=time.monotonic())

    def _replace(self, w: _Worker) -> None:
        _kill(w)
        self._pool.remove(w)
        self._pool.append(self._spawn())
        self.restarts += 1

    def _run(self, fn_ref: str, arg_list: list[tuple]) -> list[tuple[str, Any]]:
        results: list[tuple[str, Any] | None] = [None] * len(arg_list)
        todo = deque(range(len(arg_list)))
        while len(self._pool) < min(self.workers, len(arg_list)):
            self._pool.append(self._spawn())
        while todo or any(w.job is not None for w in self._pool):
            now = time.monotonic()
            for w in list(self._pool):
                if w.ready and w.job is None and todo:
                    w.job, w.deadline = todo.popleft(), now + self.timeout_s
                    try:
                        w.conn.send((fn_ref, arg_list[w.job]))
                    except OSError:  # died while idle (e.g. the OOM killer): retry the item elsewhere
                        todo.appendleft(w.job)
                        self._replace(w)
            waiting = [w for w in self._pool if w.job is not None or not w.ready]
            first_deadline = min(w.deadline if w.ready else w.started + self.start_timeout_s for w in waiting)
            readable = set(wait([w.conn for w in waiting], timeout=max(0.0, first_deadline - now)))
            now = time.monotonic()
            for w in list(waiting):
                if w.conn in readable:
                    self._receive(w, results, todo)
                elif w.ready and now >= w.deadline:
                    results[w.job] = ("timeout", None)
                    log.warning("verifier call exceeded %.1fs; killing worker pid %s", self.timeout_s, w.proc.pid)
                    self._replace(w)
                elif not w.ready and now >= w.started + self.start_timeout_s:
                    _shutdown(self._pool)
                    raise RuntimeError(f"verifier worker did not start within {self.start_timeout_s:.0f}s")
        return results  # type: ignore[return-value]

    def _receive(self, w: _Worker, results: list, todo: deque) -> None:
        try:
            status, value = w.conn.recv()
        except (EOFError, OSError):
            if not w.ready:
                _shutdown(self._pool)
                raise RuntimeError(f"verifier worker exited during start (exit code {w.proc.exitcode})") from None
            results[w.job] = ("crashed", None)
            log.warning("verifier worker pid %s died (exit code %s)", w.proc.pid, w.proc.exitcode)
            self._replace(w)
            return
        if status == "init_error":
            _shutdown(self._pool)
            raise RuntimeError(f"verifier worker failed to start: {value}")
        if status == "ready":
            w.ready = True
            return
        results[w.job] = (status, value)
        w.job, w.deadline = None, math.inf


# ---------------------------------------------------------------------------------------------- verifier

_REWARD = {"correct": 1.0}


class MathVerifier:
    """Binary Math-Verify reward on the last ``\\boxed{}`` (or "final answer is X") of each completion.

    ``use_pool=True`` (default): checks run in a :class:`DeadlinePool` of ``workers`` processes with a
    per-answer wall-clock limit of ``timeout_s``; safe from any thread. ``use_pool=False``: checks run
    in this process, for throughput comparison and debugging; the limit is then Math-Verify's own
    ``signal.alarm`` (whole seconds, main thread only) and there is NO limit off the main thread.
    Extracted answers longer than ``max_answer_chars`` score ``"parse_error"`` without being parsed
    (``None`` disables the cut; the pool's deadline still applies).
    """

    def __init__(
        self, timeout_s: float = 5.0, workers: int = 2, use_pool: bool = True, max_answer_chars: int | None = 1000
    ):
        self.timeout_s, self.workers, self.use_pool, self.max_answer_chars = timeout_s, workers, use_pool, max_answer_chars
        self._pool: DeadlinePool | None = None

    @property
    def pool(self) -> DeadlinePool:
        if self._pool is None:
            self._pool = DeadlinePool(self.workers, self.timeout_s, init=f"{__name__}:warm_up_math_verify")
        return self._pool

    def __call__(self, completions: list[str], golds: list[str]) -> list[VerifierResult]:
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        details: list[str | None] = [None] * len(completions)
        todo: list[tuple[int, str, str]] = []  # (index, answer, gold) that need Math-Verify
        for i, (text, gold) in enumerate(zip(completions, golds)):
            answer = extract_final_answer(text or "")
            if not answer:
                details[i] = "no_answer"
            elif self.max_answer_chars is not None and len(answer) > self.max_answer_chars:
                details[i] = "parse_error"
            else:
                todo.append((i, answer, str(gold)))
        for (i, _, _), detail in zip(todo, self._check([(a, g) for _, a, g in todo])):
            details[i] = detail
        return [VerifierResult(_REWARD.get(d, 0.0), d) for d in details]  # type: ignore[arg-type]

    def _check(self, pairs: list[tuple[str, str]]) -> list[str]:
        if not pairs:
            return []
        if not self.use_pool:
            on_main = threading.current_thread() is threading.main_thread()
            limit = max(1, math.ceil(self.timeout_s)) if on_main else None
            return [verify_answer(a, g, limit) for a, g in pairs]
        out = self.pool.run(f"{__name__}:verify_answer", pairs)
        return [value if status == "ok" else _POOL_DETAIL[status] for status, value in out]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Processes do not pickle (Prefect may pickle task inputs): a copy starts its own pool.
        return {**self.__dict__, "_pool": None}


_POOL_DETAIL = {"timeout": "timeout", "crashed": "parse_error", "error": "parse_error"}
