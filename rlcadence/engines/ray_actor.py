"""``runner: ray``: the generation engine in a Ray actor of the run, behind the Engine interface.

Prefect-ray's RayTaskRunner turns tasks into ``ray.remote`` functions: nothing survives between two calls,
so a model would load on every step. The engine is therefore our own actor (as SkyRL, verl and OpenRLHF do),
named ``rlcadence-generator-<run_id>`` in the ``rlcadence`` namespace; it holds the model across steps and
asks Ray for ``ray_generator_gpus`` GPUs when the generator device is CUDA (one CPU otherwise). Its
lifetime is the flow process's Ray job: a SIGKILLed flow takes its actor with it, and a resumed run
replaces any actor of the same name still registered.

Weight sync: the driver puts a host copy of the state dict in Ray's object store (``ray.put``) and sends
the actor its reference with the policy version; the actor loads it and from then on returns that version
with every batch, so a row's ``policy_version`` is the version that really sampled it. Calls on one actor
run in the order they were sent: a sync sent after a generate applies after that generate, and
:meth:`RayEngine.submit` returns at once, which is what lets generation overlap training (max_staleness).

The actor runs :class:`~rlcadence.engines.hf.TransformersEngine` with the flow's seeds, dtype and thread count:
on the CPU its samples are bitwise those of a local run.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcadence.engines.base import Completion, SamplingParams
from rlcadence.engines.hf import TransformersEngine

GenerateResult = tuple[int, list[list[Completion]], float]  # (version that sampled, groups, actor seconds)


def actor_name(run_id: str) -> str:
    return f"rlcadence-generator-{run_id}"


class GeneratorWorker:
    """The actor's body (``ray.remote`` is applied at creation, so importing this needs no Ray)."""

    def __init__(self, model_files: dict[str, bytes], version: int, device: str, dtype: str, threads: int):
        import tempfile

        torch.set_num_threads(threads)  # the driver's count: the same kernels, so the same floats
        self._dir = Path(tempfile.mkdtemp(prefix="rlc-generator-"))
        for name, data in model_files.items():
            (self._dir / name).write_bytes(data)
        self.engine = TransformersEngine(self._dir, version=version, device=device, dtype=getattr(torch, dtype))

    def ready(self) -> int:
        return self.engine.policy_version

    def load_state_dict(self, state: dict[str, torch.Tensor], version: int) -> dict[str, float]:
        self.engine.load_state_dict(state, version)
        return self.engine.last_sync

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> GenerateResult:
        t0 = time.perf_counter()
        groups = self.engine.generate(prompt_ids, n, sampling)
        return self.engine.policy_version, groups, time.perf_counter() - t0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu") for k, v in self.engine.model.state_dict().items()}


def _model_files(model_dir: Path) -> dict[str, bytes]:
    """The seed model's files, shipped to the actor's node (which may not see this machine's disk)."""
    return {p.name: p.read_bytes() for p in Path(model_dir).iterdir() if p.is_file()}


class RayEngine:
    """An :class:`~rlcadence.engines.base.Engine` whose model lives in the run's generator actor."""

    def __init__(self, run_id: str, model_dir: Path, device: torch.device, dtype: torch.dtype, gpus: float):
        import ray

        self._model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        name = actor_name(run_id)
        with contextlib.suppress(ValueError):  # a previous process's actor of this run (its job may not be
            ray.kill(ray.get_actor(name))  # reaped yet): never reuse its weights
        cuda = device.type == "cuda"
        options = {"name": name, "num_cpus": 1, "num_gpus": gpus if cuda else 0, "max_restarts": 0}
        actor_cls = ray.remote(GeneratorWorker).options(**options)
        for attempt in range(20):  # the killed actor's name is released asynchronously
            try:
                self._actor = actor_cls.remote(_model_files(model_dir), 0, "cuda" if cuda else "cpu",
                                               str(dtype).removeprefix("torch."), torch.get_num_threads())
                break
            except ValueError:
                if attempt == 19:
                    raise
                time.sleep(0.25)
        self._version = ray.get(self._actor.ready.remote())
        self._weights_ref = None  # the object-store copy of the latest version sent
        self._synced: list = []  # refs of sync calls not yet confirmed (raised at the next result)
        self._model: tuple[int, torch.nn.Module] | None = None
        self.last_sync: dict[str, float] = {}

    @property
    def policy_version(self) -> int:
        return self._version

    def load_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Queue a sync to ``version``: a host copy into the object store now, the load on the actor after
        the calls already sent to it. Returns without waiting for the actor."""
        import ray

        t0 = time.perf_counter()
        host = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        self._weights_ref = ray.put(host)
        self._synced.append(self._actor.load_state_dict.remote(self._weights_ref, version))
        self._version = version
        nbytes = sum(t.numel() * t.element_size() for t in host.values())
        self.last_sync = {"time/sync_s": time.perf_counter() - t0, "weight_sync/bytes": float(nbytes)}

    def load_weights(self, model_dir: Path, version: int) -> None:
        fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.load_state_dict(fresh.state_dict(), version)

    def submit(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams):
        """Send a generate call; :meth:`result` waits for it. The actor samples with the last version sent."""
        return self._actor.generate.remote(prompt_ids, n, sampling)

    def result(self, ref) -> GenerateResult:
        import ray

        if self._synced:
            ray.get(self._synced)  # a failed sync is raised here, not swallowed
            self._synced = []
        return ray.get(ref)

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        return self.result(self.submit(prompt_ids, n, sampling))[1]

    @property
    def model(self) -> torch.nn.Module:
        """A local module with the actor's current weights (a checkpoint of a version still in use needs
        them): the object-store copy of the last sync, or the actor's own weights."""
        import ray

        if self._model is None or self._model[0] != self._version:
            state = ray.get(self._weights_ref) if self._weights_ref is not None else ray.get(self._actor.state_dict.remote())
            module = AutoModelForCausalLM.from_pretrained(self._model_dir, dtype=torch.float32)
            module.load_state_dict(state)
            self._model = (self._version, module.eval())
        return self._model[1]

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):  # the cluster may already be gone: nothing left to free then
            ray.kill(self._actor)
