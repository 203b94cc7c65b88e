"""What a checkpoint holds: model + tokenizer (loadable by transformers) + the trainer state.

The trainer state holds everything resume needs to continue rather than repeat: optimizer state, the
step counter, the data cursor, the generator's and the reference's policy versions, and RNG states.
Where checkpoints live is the store's business (:mod:`rlcadence.storage.checkpoints`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

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


def write_checkpoint(out_dir: Path, model, tokenizer, state: TrainerState) -> Path:
    """Save model, tokenizer and trainer state (with this process's RNG states) into ``out_dir``."""
    state.torch_rng = torch.get_rng_state()
    state.python_rng = random.getstate()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    torch.save(asdict(state), Path(out_dir) / STATE_FILE)
    return Path(out_dir)


def load_trainer_state(ckpt_dir: Path) -> TrainerState:
    raw = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=False)
    return TrainerState(**raw)
