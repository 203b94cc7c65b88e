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


def test_flow_takes_two_grpo_ranks_and_refuses_what_they_do_not_cover():
    check_train_processes(RLConfig(device="cpu", train_world_size=2))  # GRPO, DDP: the flow runs it
    check_train_processes(RLConfig(device="cpu", train_world_size=2, train_strategy="fsdp2"))
    for overrides, named in [({"algorithm": "dpo"}, "algorithm=dpo"), ({"policy_loss": {"kl_beta": 0.1}}, "kl_beta=0.1"),
                             ({"policy_loss": {"tis_cap": 2.0}}, "tis_cap=2.0")]:
        with pytest.raises(ValueError, match=rf"train_world_size=2 cannot run with .*{named}"):
            check_train_processes(RLConfig(device="cpu", train_world_size=2, **overrides))
        check_train_processes(RLConfig(device="cpu", **overrides))  # one process takes them all


def test_more_ranks_than_cuda_devices_is_refused(monkeypatch):
    """On CUDA the rule is one device per rank (torch.cuda.device_count()), checked when the config is built."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    RLConfig(device="cuda", train_world_size=1)
    with pytest.raises(ValidationError, match=r"train_world_size=2 is larger than the 1 CUDA device\(s\)"):
        RLConfig(device="cuda", train_world_size=2)


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
    assert main(["run", "--store", str(store), "--set", "train_world_size=3", "--set", "device=cpu",
                 "--set", "algorithm=sft"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train_world_size=3 cannot run with algorithm=sft") and "\n" not in err
    assert not store.exists(), "no work (not even the store) may start"
