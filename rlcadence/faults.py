"""Fail points for crash tests: ``RLCADENCE_CRASH_AT=<point>:<step>[,<point>:<step>...]`` SIGKILLs this
process at the first armed point it reaches.

Points: ``generate`` (inside generation, after sampling started), ``write:<table>`` (half-way through
writing a Parquet file: a temp file with half the bytes is left behind, never renamed), ``write:checkpoint``
(half-way through publishing checkpoint ``step``: a temp directory, or on S3 objects without their
``_COMPLETE`` marker, is left behind), ``startup:0`` (the CLI, right after it recorded the run, before
Prefect or any model starts). A real SIGKILL,
so nothing is flushed or cleaned up, exactly like an OOM kill or a lost machine.
"""

from __future__ import annotations

import os
import posixpath
import signal

ENV = "RLCADENCE_CRASH_AT"


def _armed(point: str, step: int) -> bool:
    for spec in filter(None, os.environ.get(ENV, "").split(",")):
        want_point, _, want_step = spec.strip().rpartition(":")
        if want_point == point and want_step == str(step):
            return True
    return False


def maybe_crash(point: str, step: int) -> None:
    if _armed(point, step):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_crash_mid_write(loc, parts: tuple[str, ...], payload: bytes, *, table: str, step: int) -> None:
    """Leave a half-written temp file (as a killed writer would), then die."""
    if not _armed(f"write:{table}", step):
        return
    final = loc.path(*parts)
    loc.fs.create_dir(posixpath.dirname(final), recursive=True)
    tmp = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.crash.tmp")
    with loc.fs.open_output_stream(tmp) as f:
        f.write(payload[: len(payload) // 2])
    os.kill(os.getpid(), signal.SIGKILL)


FAIL_ENV = "RLCADENCE_FAIL_AT"


class InjectedFailure(RuntimeError):
    """Raised by ``RLCADENCE_FAIL_AT=<stage>:<step>``: an ordinary exception (retried, then fatal)."""


def maybe_fail(stage: str, step: object) -> None:
    """``RLCADENCE_FAIL_AT=train:1`` raises in stage ``train`` of step 1, every attempt."""
    spec = os.environ.get(FAIL_ENV, "")
    want_stage, _, want_step = spec.rpartition(":")
    if spec and want_stage == stage and want_step == str(step):
        raise InjectedFailure(f"injected failure in {stage} at step {step}\n(second line, not recorded)")


def maybe_crash_in_dir(parts: tuple[str, ...], written: int, total: int) -> None:
    """Die half-way through publishing checkpoint ``step`` (``write:checkpoint:<step>``)."""
    if parts[:1] != ("checkpoints",) or written != max(total // 2, 1):
        return
    step = parts[-1].removeprefix("step-")
    if step.isdigit() and _armed("write:checkpoint", int(step)):
        os.kill(os.getpid(), signal.SIGKILL)
