"""``loggers: [tensorboard]``: the same per-step metrics as event files, for users who live in TensorBoard."""

from __future__ import annotations

from pathlib import Path


class TensorBoardLogger:
    """One scalar per metric per step (``reward/mean``, ``eval/accuracy``, ...: TensorBoard groups by prefix)."""

    def __init__(self, logdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's writer needs the tensorboard package
            raise RuntimeError("loggers: [tensorboard] needs the tensorboard package: pip install tensorboard") from err
        self.logdir = logdir
        self._writer = SummaryWriter(log_dir=str(logdir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()  # a crash loses no committed step

    def close(self) -> None:
        self._writer.close()
