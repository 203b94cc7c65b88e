"""Shared helpers for flow-level tests: small configs, the CLI in a subprocess, store queries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from rlcadence.storage.query import query
from rlcadence.storage.stores import open_location

CLI = str(Path(sys.executable).parent / "rlcadence")


def small_config(seed_model: Path, store: str, **overrides) -> dict:
    """A run of a few seconds per step on the session's tiny seed model."""
    cfg = {
        "model": str(seed_model),
        "store": store,
        "steps": 4,
        "prompts_per_step": 8,
        "group_size": 4,
        "eval_every": 2,
        "eval_size": 50,
        "bootstrap": {"environment": {"n_heldout": 50}},
        "compact_every": 2,  # compaction on in every flow test: in the run every 2 steps, and at its end
        "segment_steps": 3,  # a 4-step run crosses a segment boundary (task_span: segment, the default)
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def write_config(tmp_path: Path, cfg: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = os.environ.copy() | (env or {})
    return subprocess.run([CLI, *args], env=full_env, capture_output=True, text=True, timeout=timeout)


def sql(store: str, text: str) -> list[tuple]:
    return query(open_location(store), text)[1]


def final_weights(store: str, run_id: str) -> dict:
    return load_file(str(Path(store) / "models" / run_id / "model.safetensors"))
