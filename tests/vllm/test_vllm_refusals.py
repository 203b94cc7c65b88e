"""engine=vllm with a model architecture vLLM cannot load: refused before any work, naming the model path."""

from __future__ import annotations

import json
import shutil

import pytest

from rlcadence.config import RLConfig
from rlcadence.models.source import UnusableModel
from rlcadence.preflight import seed_model_dir

pytestmark = pytest.mark.vllm


def test_unknown_architecture_is_refused_naming_the_path(vllm_model, tmp_path):
    odd = tmp_path / "odd-model"
    shutil.copytree(vllm_model, odd)
    meta = json.loads((odd / "config.json").read_text())
    meta["architectures"] = ["NotAVllmArchForCausalLM"]  # model_type stays llama: transformers loads it
    (odd / "config.json").write_text(json.dumps(meta))
    assert seed_model_dir(RLConfig(model=str(odd), engine="transformers")) == odd.resolve()
    with pytest.raises(UnusableModel, match=f"model {odd.resolve()}: architecture NotAVllmArchForCausalLM is not one vLLM"):
        seed_model_dir(RLConfig(model=str(odd), engine="vllm"))
    assert seed_model_dir(RLConfig(model=str(vllm_model), engine="vllm")) == vllm_model.resolve()


def test_serve_generator_refuses_an_unknown_architecture_naming_the_path(vllm_model, tmp_path):
    from tests.conftest import free_port
    from tests.integration.helpers import run_cli

    odd = tmp_path / "odd-model"
    shutil.copytree(vllm_model, odd)
    meta = json.loads((odd / "config.json").read_text())
    meta["architectures"] = ["NotAVllmArchForCausalLM"]
    (odd / "config.json").write_text(json.dumps(meta))
    out = run_cli("serve-generator", str(odd), "--port", str(free_port()), "--pid-file", str(tmp_path / "pid"),
                  timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"model {odd.resolve()}: architecture NotAVllmArchForCausalLM is not one vLLM can load" in out.stderr
    assert not (tmp_path / "pid").exists()  # no server was started
