"""What a checkpoint holds, in safetensors: model + tokenizer (loadable by transformers) + the trainer state.

A *full* checkpoint (every ``checkpoint_every`` steps) holds everything resume needs to continue rather than
repeat: optimizer state, the step counter, the data cursor, the generator's and the reference's policy
versions, and RNG states. A *weights* checkpoint holds only the model: it keeps a generator or reference
version that is older than the latest full checkpoint (semi-online or offline cadences) loadable.

Writing is split in two so it can leave the step's critical path: :func:`snapshot` copies what is needed to
host memory (the only part the trainer waits for); :func:`write_snapshot` serialises it, on any thread.
Where checkpoints live is the store's business (:mod:`rlcadence.storage.checkpoints`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"
LEGACY_STATE_FILE = "trainer_state.pt"  # wave-1 checkpoints (torch.save of the whole state)
RNG_FILE = "rng.safetensors"
OPTIMIZER_PATTERN = "optimizer{suffix}.safetensors"
OPTIMIZER_INDEX = "optimizer.safetensors.index.json"


@dataclass
class TrainerState:
    step: int  # optimizer steps taken
    data_cursor: int  # index of the next training prompt
    generator_version: int  # checkpoint step the generator's weights come from
    ref_version: int  # checkpoint step the reference model's weights come from
    optimizer: dict = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None
    python_rng: object | None = None
    cuda_rng: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Snapshot:
    """Host copies of one checkpoint's contents: nothing here aliases the live model or optimizer."""

    model: object  # the live module, for its config/generation config only (its tensors are not read)
    tokenizer: object
    weights: dict[str, torch.Tensor]
    state: TrainerState | None  # None: a weights-only checkpoint

    @property
    def nbytes(self) -> int:
        tensors = list(self.weights.values())
        if self.state is not None:
            tensors += [t for s in self.state.optimizer.get("state", {}).values() for t in s.values()
                        if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


def _host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


def snapshot(model, tokenizer, state: TrainerState | None, optimizer: torch.optim.Optimizer | None = None) -> Snapshot:
    """Copy weights (and optimizer state + RNG states, for a full checkpoint) to host memory, now."""
    weights = {k: _host(v) for k, v in model.state_dict().items()}
    if state is None:
        return Snapshot(model, tokenizer, weights, None)
    opt = optimizer.state_dict() if optimizer is not None else state.optimizer
    return Snapshot(model, tokenizer, weights, frozen_state(state, opt))


def frozen_state(state: TrainerState, opt: dict) -> TrainerState:
    """``state`` with host copies of the optimizer state dict ``opt`` and this process's RNG states, now."""
    host_opt = {"state": {i: {k: _host(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                          for i, s in opt.get("state", {}).items()},
                "param_groups": opt.get("param_groups", [])}
    cuda = [_host(t) for t in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return TrainerState(state.step, state.data_cursor, state.generator_version, state.ref_version,
                        host_opt, torch.get_rng_state(), random.getstate(), cuda)


def _save_sharded(tensors: dict[str, torch.Tensor], out_dir: Path, pattern: str, index_name: str,
                  max_shard_bytes: int) -> None:
    split = split_torch_state_dict_into_shards(tensors, filename_pattern=pattern, max_shard_size=max_shard_bytes)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: tensors[n].contiguous() for n in names}, str(out_dir / filename))
    if split.is_sharded:
        (out_dir / index_name).write_text(json.dumps({"weight_map": split.tensor_to_filename}))


def _load_sharded(ckpt_dir: Path, pattern: str, index_name: str) -> dict[str, torch.Tensor]:
    index = ckpt_dir / index_name
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else [pattern.format(suffix="")]
    out: dict[str, torch.Tensor] = {}
    for name in files:
        out |= load_file(str(ckpt_dir / name))
    return out


def write_snapshot(out_dir: Path, snap: Snapshot, max_shard_bytes: int) -> Path:
    """Serialise a snapshot: HF model dir (sharded safetensors) + tokenizer + optimizer/RNG safetensors."""
    out_dir = Path(out_dir)
    snap.model.save_pretrained(out_dir, state_dict=snap.weights, max_shard_size=max_shard_bytes)
    snap.tokenizer.save_pretrained(out_dir)
    state = snap.state
    if state is None:
        return out_dir
    flat: dict[str, torch.Tensor] = {}
    scalars: dict[str, object] = {}
    for i, s in state.optimizer["state"].items():
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                flat[f"{i}.{k}"] = v
            else:
                scalars[f"{i}.{k}"] = v
    if flat:
        _save_sharded(flat, out_dir, OPTIMIZER_PATTERN, OPTIMIZER_INDEX, max_shard_bytes)
    rng = {"torch": state.torch_rng} | {f"cuda.{i}": t for i, t in enumerate(state.cuda_rng)}
    save_file(rng, str(out_dir / RNG_FILE))
    meta = {"step": state.step, "data_cursor": state.data_cursor, "generator_version": state.generator_version,
            "ref_version": state.ref_version, "param_groups": state.optimizer["param_groups"],
            "optimizer_scalars": scalars, "optimizer_tensors": bool(flat),
            "python_rng": [state.python_rng[0], list(state.python_rng[1]), state.python_rng[2]]}
    (out_dir / STATE_FILE).write_text(json.dumps(meta))
    return out_dir


def load_trainer_state(ckpt_dir: Path) -> TrainerState:
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / STATE_FILE).exists() and (ckpt_dir / LEGACY_STATE_FILE).exists():
        return TrainerState(**torch.load(ckpt_dir / LEGACY_STATE_FILE, weights_only=False))
    meta = json.loads((ckpt_dir / STATE_FILE).read_text())
    flat = _load_sharded(ckpt_dir, OPTIMIZER_PATTERN, OPTIMIZER_INDEX) if meta["optimizer_tensors"] else {}
    per_param: dict[int, dict] = {}
    for key, value in [*flat.items(), *meta["optimizer_scalars"].items()]:
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = value
    optimizer = {"state": dict(sorted(per_param.items())), "param_groups": meta["param_groups"]} if per_param or \
        meta["param_groups"] else {}
    rng = load_file(str(ckpt_dir / RNG_FILE))
    cuda = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    py = meta["python_rng"]
    return TrainerState(meta["step"], meta["data_cursor"], meta["generator_version"], meta["ref_version"],
                        optimizer, rng["torch"], (py[0], tuple(py[1]), py[2]), cuda)


def restore_rng(state: TrainerState) -> None:
    """Put this process's RNGs where they were when the checkpoint was taken."""
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    if state.python_rng is not None:
        random.setstate(state.python_rng)
    if state.cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng)
