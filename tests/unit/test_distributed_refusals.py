"""train_world_size / train_backend are refused before any work, naming the field."""

from __future__ import annotations

import os

import pytest
import torch
from pydantic import ValidationError

from rlcadence.config import RLConfig
from rlcadence.preflight import check_train_processes
from rlcadence.trainer import distributed


def test_default_is_one_process():
    cfg = RLConfig()
    assert (cfg.train_world_size, cfg.train_backend) == (1, "auto")
    check_train_processes(cfg)  # the flow accepts today's path


def test_world_size_larger_than_cpu_cores_is_refused():
    n = os.cpu_count()
    RLConfig(device="cpu", train_world_size=n)
    with pytest.raises(ValidationError, match=rf"train_world_size={n + 1} is larger than the {n} CPU core"):
        RLConfig(device="cpu", train_world_size=n + 1)


def test_nccl_without_cuda_is_refused():
    with pytest.raises(ValidationError, match="train_backend=nccl needs CUDA"):
        RLConfig(device="cpu", train_backend="nccl")


def test_flow_refuses_several_processes():
    with pytest.raises(ValueError, match="train_world_size=2: the RL flow's train stage runs in one process"):
        check_train_processes(RLConfig(device="cpu", train_world_size=2))


def test_init_refuses_before_joining_a_group(tmp_path):
    """A launch with more local processes than cores fails at once, never waiting for missing ranks."""
    n = os.cpu_count()
    with pytest.raises(ValueError, match=rf"train_world_size={n + 1}"):
        distributed.init("gloo", "cpu", timeout_s=5, init_method=f"file://{tmp_path / 'store'}", rank=0,
                         world_size=n + 1)
    assert not torch.distributed.is_initialized()


def test_cli_refuses_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from rlcadence.cli import main

    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # the same on every machine
    store = tmp_path / "store"
    assert main(["run", "--store", str(store), "--set", "train_world_size=5", "--set", "device=cpu"]) == 2
    assert "train_world_size=5 is larger than the 4 CPU core(s)" in capsys.readouterr().err
    assert main(["run", "--store", str(store), "--set", "train_world_size=3", "--set", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train_world_size=3: the RL flow's train stage runs in one process") and "\n" not in err
    assert not store.exists(), "no work (not even the store) may start"
