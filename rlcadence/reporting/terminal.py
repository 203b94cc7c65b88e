"""Progress in the terminal: a rich bar (steps, reward, held-out accuracy, ETA; or the bootstrap's SFT steps,
loss and validation accuracy) on a TTY, nothing otherwise
(a log file or a worker gets the flow's plain ``step k: reward ...`` lines instead)."""

from __future__ import annotations

import sys


class TerminalProgress:
    """``update(done, reward, heldout)`` after each step; ``close()`` at the end. Silent when not a TTY."""

    def __init__(self, total: int, done: int, description: str, stream=None):
        stream = stream or sys.stderr
        self._bar = None
        if not (hasattr(stream, "isatty") and stream.isatty()):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                             console=Console(file=stream), transient=False)
        self._task = self._bar.add_task(description, total=total, completed=done, stats="")
        self._bar.start()

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, done: int, reward: float | None, heldout: float | None) -> None:
        stats = f"reward {reward:.3f}" if reward is not None else ""
        if heldout is not None:
            stats += f" · held-out {100 * heldout:.1f}%"
        self.show(done, stats)

    def show(self, done: int, stats: str, total: int | None = None) -> None:
        """Any loop's progress (the bootstrap's SFT: its end moves when the validation target is hit)."""
        if self._bar is None:
            return
        self._bar.update(self._task, completed=done, stats=stats, **({} if total is None else {"total": total}))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
