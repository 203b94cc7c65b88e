"""Where tensors live: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, checked before any work.

One resolver for every component (trainer, generator, reference, reward models, judges, evaluation), so a
bad value fails the same way everywhere: naming the field, before a model is loaded.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def check_device(spec: str) -> str:
    """``spec`` if this machine has that device; else a ValueError that says what it has."""
    if not re.match(DEVICE_PATTERN, spec):
        raise ValueError(f"{spec!r} is not a device: use auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda"):
        import torch  # only here: a config check on the CPU must not pay for importing torch

        if not torch.cuda.is_available():
            raise ValueError(f"{spec!r} asked for, but this machine has no CUDA device (torch {torch.__version__}); "
                             "use device=auto or cpu")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{spec!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return spec


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(spec))


def configure_matmul(device: torch.device) -> None:
    """TF32 for fp32 matmuls and cuDNN on CUDA: safe for training (bf16 autocast already rounds harder)."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op context on the CPU (keeps CPU runs bitwise reproducible in fp32)."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def check_world_size(world_size: int, device: str, backend: str = "auto") -> int:
    """``world_size`` training processes on this machine, if it has a device for each: a CUDA device each on
    CUDA (``device`` cuda/cuda:N, or auto with CUDA present), a CPU core each on the CPU; else a ValueError
    naming ``train_world_size``. A backend that cannot run on the device is refused too."""
    import os

    if world_size < 1:
        raise ValueError(f"train_world_size must be >= 1, got {world_size}")
    if world_size == 1 and backend != "nccl":
        return world_size  # today's single process: no torch import, nothing to check
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "nccl" and not cuda:
        raise ValueError(f"train_backend=nccl needs CUDA, but device={device!r} trains on the CPU; use gloo or auto")
    have, what = (torch.cuda.device_count(), "CUDA device(s)") if cuda else (os.cpu_count() or 1, "CPU core(s)")
    if world_size > have:
        raise ValueError(f"train_world_size={world_size} is larger than the {have} {what} this machine has "
                         f"for device={device!r}")
    return world_size
