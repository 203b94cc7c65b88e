"""Checkpoints: model + tokenizer (loadable by transformers) + trainer state, published atomically.

The trainer state holds everything resume needs to continue rather than repeat: optimizer state, the
step counter, the data cursor, the generator's and the reference's policy versions, and RNG states.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlcadence.storage.location import StoreLocation

STATE_FILE = "trainer_state.pt"


@dataclass
class TrainerState:
    step: int  # optimizer steps taken
    data_cursor: int  # index of the next training prompt
    generator_version: int  # checkpoint step the generator's weights come from
    ref_version: int  # checkpoint step the reference model's weights come from
    optimizer: dict = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None
    python_rng: object | None = None


def checkpoint_parts(run_id: str, step: int) -> tuple[str, ...]:
    return ("checkpoints", run_id, f"step-{step:06d}")


def save_checkpoint(loc: StoreLocation, run_id: str, model, tokenizer, state: TrainerState) -> str:
    """Write to a local temp dir, then publish under ``checkpoints/<run>/step-N`` in one move."""
    state.torch_rng = torch.get_rng_state()
    state.python_rng = random.getstate()
    with tempfile.TemporaryDirectory(prefix="rlc-ckpt-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(asdict(state), Path(tmp) / STATE_FILE)
        return loc.put_dir(Path(tmp), *checkpoint_parts(run_id, state.step))


def local_checkpoint_dir(loc: StoreLocation, run_id: str, step: int, cache_root: Path) -> Path:
    """A local directory holding checkpoint ``step`` (downloaded first when the store is remote)."""
    parts = checkpoint_parts(run_id, step)
    if not loc.dir_complete(*parts):
        raise FileNotFoundError(f"checkpoint {loc.uri_of(*parts)} is missing or incomplete")
    return loc.get_dir(cache_root / run_id / parts[-1], *parts)


def load_trainer_state(ckpt_dir: Path) -> TrainerState:
    raw = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=False)
    return TrainerState(**raw)


def checkpoint_steps(loc: StoreLocation, run_id: str) -> list[int]:
    """Steps with a complete checkpoint for ``run_id``."""
    steps = []
    for name in loc.list_dirs("checkpoints", run_id):
        if name.startswith("step-") and loc.dir_complete("checkpoints", run_id, name):
            steps.append(int(name.removeprefix("step-")))
    return sorted(steps)


def prune_checkpoints(loc: StoreLocation, run_id: str, keep_latest: int, pinned: set[int]) -> list[int]:
    """Delete checkpoints not among the latest ``keep_latest`` nor ``pinned`` (generator/ref versions)."""
    steps = checkpoint_steps(loc, run_id)
    keep = set(steps[-keep_latest:]) | pinned
    removed = [s for s in steps if s not in keep]
    for s in removed:
        loc.delete_dir(*checkpoint_parts(run_id, s))
    return removed
