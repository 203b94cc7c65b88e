"""Math answers checked with Math-Verify, in worker processes that can be killed.

The reward is binary, as in paper A (arXiv 2506.21495, "binary Math-Verify reward") and paper B
(arXiv 2505.17218, "last \\boxed{} checked"): 1.0 when the completion's final answer equals the gold
answer under ``math_verify.verify(parse(gold), parse(pred))`` (gold first), else 0.0.

Why a pool of our own. Math-Verify's own timeouts use ``signal.alarm``, which only works on the main
thread (Prefect runs tasks in threads), and only interrupts Python bytecode: a pathological input
(10,000 nested ``\\frac``, a megabyte of ``1+1+...``) can keep SymPy or the ANTLR parser busy for
minutes. ``concurrent.futures.ProcessPoolExecutor`` cannot cancel a running call, so one hung answer
would hold a worker, and the stage, forever. :class:`DeadlinePool` keeps ``workers`` long-lived
``spawn`` processes, each with its own pipe; each answer gets a wall-clock deadline when the worker
starts on it, and a worker still busy at its deadline is SIGKILLed and replaced. The answer scores 0
with detail ``"timeout"``, the worker's other answers go to another worker, and the other workers keep
going, so a batch always returns in about ``n_hung * timeout_s / workers`` plus normal work. Answers
that share a gold (a GRPO group) go to the same worker, where Math-Verify's parse caches hit.
Call ``verifier.pool.start()`` to pay the start-up (~1-2 s: SymPy import) before the first batch.
``spawn`` (not ``fork``) because the parent may hold threads and torch state that ``fork`` would copy
half-locked; as with any ``spawn`` pool, a script that uses it needs an ``if __name__ == "__main__"``
guard.

Details (exactly these strings): ``"correct"``, ``"wrong"``, ``"no_answer"`` (no ``\\boxed{}`` and no
"final answer is" phrase, or an empty one), ``"timeout"``, ``"parse_error"`` (gold or answer not
parseable, answer longer than ``max_answer_chars``, or the worker crashed).
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from rlcadence.verifiers.base import VerifierResult

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- extraction

# a \boxed opening, a LaTeX line break or an escaped brace (both ignored), a brace
_BOXED_TOKENS = re.compile(r"\\boxed\s*\{|\\\\|\\[{}]|[{}]")
_DOLLAR = re.compile(r"(?<!\\)\$")  # an unescaped $
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
    if _DOLLAR.search(answer) or any(d in answer for d in ("\\boxed", "\\(", "\\[")):
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
    """Worker loop: receive ``(fn_ref, [args, ...])``, reply once per item, in order,
    ``("ok", value)`` or ``("error", "Type: message")``; ``None`` stops the worker."""
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
        ref, items = msg
        for args in items:
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
    queue: deque = field(default_factory=deque)  # item indices sent and not yet answered, in order
    deadline: float = math.inf  # for the item at the head of the queue


def _kill(w: _Worker) -> None:
    if w.proc.is_alive():
        w.proc.kill()
    w.proc.join(timeout=2)
    w.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        with contextlib.suppress(OSError):  # already dead
            w.conn.send(None)
    for w in workers:
        w.proc.join(timeout=0.5)
        _kill(w)
    workers.clear()


def _chunks(keys: list[Hashable] | None, n: int, max_chunk: int) -> deque[list[int]]:
    """Consecutive items with equal keys, at most ``max_chunk`` long (no keys: one item per chunk)."""
    out: deque[list[int]] = deque()
    for i in range(n):
        if out and keys is not None and keys[i] == keys[out[-1][-1]] and len(out[-1]) < max_chunk:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class DeadlinePool:
    """``workers`` spawned processes running ``module:function`` calls, each call with its own deadline.

    ``run(fn_ref, arg_list, keys)`` returns one ``(status, value)`` per item, in order:
    ``("ok", result)``, ``("error", "Type: message")`` (the function raised), ``("timeout", None)``
    (killed at its deadline) or ``("crashed", None)`` (the worker died).

    Consecutive items with equal ``keys`` go to one worker as one message, answered item by item;
    each item's deadline starts when the previous answer arrives, so the limit stays per item. For
    Math-Verify the key is the gold: a GRPO group's samples share it and mostly repeat a few answer
    strings, so Math-Verify's per-process parse caches hit (spreading a group over workers made
    each of them parse it again: twice the CPU with two workers). On a kill, the dead worker's
    unanswered items go back to the queue. Thread-safe (calls are serialised); usable from any thread.
    Workers start lazily and live until :meth:`close` or garbage collection.
    """

    def __init__(
        self,
        workers: int,
        timeout_s: float,
        init: str | None = None,
        start_timeout_s: float = 120.0,
        max_chunk: int = 32,
    ):
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"need workers >= 1 and timeout_s > 0, got {workers=} {timeout_s=}")
        self.workers, self.timeout_s = workers, timeout_s
        self.init, self.start_timeout_s, self.max_chunk = init, start_timeout_s, max_chunk
        self.restarts = 0  # workers killed or lost so far (a health metric)
        self._ctx = mp.get_context("spawn")
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)

    def start(self) -> None:
        """Start all workers now and wait until they are ready (otherwise they start on first use)."""
        with self._lock:
            while len(self._pool) < self.workers:
                self._pool.append(self._spawn())
            for w in self._pool:
                while not w.ready:
                    left = w.started + self.start_timeout_s - time.monotonic()
                    if left <= 0 or not w.conn.poll(left):
                        _shutdown(self._pool)
                        raise RuntimeError(
                            f"verifier worker did not start within {self.start_timeout_s:.0f}s"
                        )
                    self._receive(w, [], deque())

    def close(self) -> None:
        with self._lock:
            _shutdown(self._pool)

    def run(
        self, fn_ref: str, arg_list: list[tuple], keys: list[Hashable] | None = None
    ) -> list[tuple[str, Any]]:
        with self._lock:
            return self._run(fn_ref, arg_list, _chunks(keys, len(arg_list), self.max_chunk))

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self.init), daemon=True, name="rlcadence-verify"
        )
        proc.start()
        child.close()
        return _Worker(proc=proc, conn=parent, started=time.monotonic())

    def _replace(self, w: _Worker, todo: deque[list[int]]) -> None:
        """Kill ``w`` (its unanswered items go back to the front of ``todo``) and start a fresh worker."""
        if w.queue:
            todo.appendleft(list(w.queue))
        _kill(w)
        self._pool.remove(w)
        self._pool.append(self._spawn())
        self.restarts += 1

    def _run(self, fn_ref: str, arg_list: list[tuple], todo: deque[list[int]]) -> list[tuple[str, Any]]:
        results: list[tuple[str, Any] | None] = [None] * len(arg_list)
        while len(self._pool) < min(self.workers, len(todo)):
            self._pool.append(self._spawn())
        while todo or any(w.queue for w in self._pool):
            now = time.monotonic()
            for w in list(self._pool):
                # One chunk in flight per worker: a second one could fill the pipe while the worker is
                # stuck, and block this loop in send() past the deadline it has to enforce.
                if w.ready and not w.queue and todo:
                    chunk = todo.popleft()
                    w.deadline = now + self.timeout_s
                    w.queue.extend(chunk)
                    try:
                        w.conn.send((fn_ref, [arg_list[i] for i in chunk]))
                    except OSError:  # died while idle (e.g. the OOM killer): the chunk goes to another
                        self._replace(w, todo)
            waiting = [w for w in self._pool if w.queue or not w.ready]
            first_deadline = min(w.deadline if w.ready else w.started + self.start_timeout_s for w in waiting)
            readable = set(wait([w.conn for w in waiting], timeout=max(0.0, first_deadline - now)))
            now = time.monotonic()
            for w in waiting:
                if w.conn in readable:
                    self._receive(w, results, todo)
                    while w in self._pool and w.queue and w.conn.poll():  # drain answers already sent
                        self._receive(w, results, todo)
                elif w.ready and now >= w.deadline:
                    results[w.queue.popleft()] = ("timeout", None)
                    log.warning(
                        "verifier call exceeded %.1fs; killing worker pid %s", self.timeout_s, w.proc.pid
                    )
                    self._replace(w, todo)
                elif not w.ready and now >= w.started + self.start_timeout_s:
                    _shutdown(self._pool)
                    raise RuntimeError(f"verifier worker did not start within {self.start_timeout_s:.0f}s")
        return results  # type: ignore[return-value]

    def _receive(self, w: _Worker, results: list, todo: deque[list[int]]) -> None:
        try:
            status, value = w.conn.recv()
        except (EOFError, OSError):
            if not w.ready:
                _shutdown(self._pool)
                raise RuntimeError(
                    f"verifier worker exited during start (exit code {w.proc.exitcode})"
                ) from None
            results[w.queue.popleft()] = ("crashed", None)
            log.warning("verifier worker pid %s died (exit code %s)", w.proc.pid, w.proc.exitcode)
            self._replace(w, todo)
            return
        if status == "init_error":
            _shutdown(self._pool)
            raise RuntimeError(f"verifier worker failed to start: {value}")
        if status == "ready":
            w.ready = True
            return
        results[w.queue.popleft()] = (status, value)
        w.deadline = time.monotonic() + self.timeout_s if w.queue else math.inf


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
        self,
        timeout_s: float = 5.0,
        workers: int = 2,
        use_pool: bool = True,
        max_answer_chars: int | None = 1000,
    ):
        self.timeout_s, self.workers = timeout_s, workers
        self.use_pool, self.max_answer_chars = use_pool, max_answer_chars
        self._pool: DeadlinePool | None = None

    _pool_lock = threading.Lock()  # class-level: two threads must not both create a pool

    @property
    def pool(self) -> DeadlinePool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = DeadlinePool(
                    self.workers, self.timeout_s, init=f"{__name__}:warm_up_math_verify"
                )
            return self._pool

    def __call__(self, completions: list[str], golds: list[str]) -> list[VerifierResult]:
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        details: list[str | None] = [None] * len(completions)
        todo: list[tuple[int, str, str]] = []  # (index, answer, gold) that need Math-Verify
        for i, (text, gold) in enumerate(zip(completions, golds, strict=True)):
            answer = extract_final_answer(text or "")
            if not answer:
                details[i] = "no_answer"
            elif gold is None or not str(gold).strip():
                details[i] = "parse_error"  # a row without a gold answer cannot be checked
            elif self.max_answer_chars is not None and len(answer) > self.max_answer_chars:
                details[i] = "parse_error"
            else:
                todo.append((i, answer, str(gold)))
        for (i, _, _), detail in zip(todo, self._check([(a, g) for _, a, g in todo]), strict=True):
            details[i] = detail
        return [VerifierResult(_REWARD.get(d, 0.0), d) for d in details]  # type: ignore[arg-type]

    def _check(self, pairs: list[tuple[str, str]]) -> list[str]:
        if not pairs:
            return []
        if not self.use_pool:
            on_main = threading.current_thread() is threading.main_thread()
            limit = max(1, math.ceil(self.timeout_s)) if on_main else None
            return [verify_answer(a, g, limit) for a, g in pairs]
        out = self.pool.run(f"{__name__}:verify_answer", pairs, keys=[g for _, g in pairs])
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
