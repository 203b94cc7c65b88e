"""Parameters of the standalone evaluation (`rlcadence eval`, the ``rlcadence-eval`` flow): which weights,
which eval sets, where the rows go. Also the Prefect UI form of the ``eval`` deployment.

The target is ``MODEL_DIR`` (or a hub id in the local cache), ``RUN`` (its latest checkpoint) or
``RUN@STEP`` (the policy after STEP updates: a stored checkpoint or weights file of that version, else the
latest full checkpoint before it plus a replay of the committed steps, as a resume does).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from rlcadence.config import DEFAULT_STORE, _check_eval_sets
from rlcadence.devices import DEVICE_PATTERN, check_device
from rlcadence.environments.spec import EnvironmentSpec
from rlcadence.storage.s3 import S3Settings
from rlcadence.strict import Strict


class EvalTargetError(ValueError):
    """A target that names no model directory, run or checkpoint; the message is one line naming it."""


class EvalConfig(Strict):
    """One evaluation: a model or a run's checkpoint on eval sets; rows to the store's ``evals`` table."""

    model: str = Field(description="MODEL_DIR, a cached hub id, RUN (latest checkpoint) or RUN@STEP.")
    store: str = Field(DEFAULT_STORE, description="Where the run is (for RUN targets) and where rows are written.")
    s3: S3Settings | None = None
    environments: list[EnvironmentSpec] | None = Field(
        None, description="Environments with eval_sets; None: the run's own (a run target). A dataset environment "
        "needs no training source here.")
    sets: list[str] | None = Field(None, description="Evaluate only these eval sets (by name); None: all.")
    seed: int | None = Field(None, description="Seed the sampling seeds derive from; None: the run's seed (0 for a "
                             "model), so a run's checkpoint samples what the run's own evaluation sampled.")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="None: the run's device (auto for a model).")
    eval_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="run_id of the rows written (evals and metrics tables); "
        "None: <run or model name>-eval-<hash of the sets and seed>, so each step of one job is one partition.")

    @field_validator("device")
    @classmethod
    def _device_exists(cls, v: str | None) -> str | None:
        return v if v is None or v == "auto" else check_device(v)

    @model_validator(mode="after")
    def _sets(self) -> EvalConfig:
        if self.environments is not None:
            _check_eval_sets(self.environments, training=False)
        return self


@dataclass(frozen=True)
class Target:
    """What is evaluated: a run's policy after ``step`` updates, or a model directory (step 0)."""

    name: str  # the run id, or the model directory's name
    run_id: str | None = None
    step: int = 0
    model_dir: Path | None = None

    @property
    def label(self) -> str:
        """The evals table's ``model`` column (a run's: the same as its own evaluation writes)."""
        return f"run:{self.run_id}@{self.step}" if self.run_id else str(self.model_dir)


def parse_target(text: str) -> tuple[str, int | None]:
    """``RUN@STEP`` -> (RUN, STEP); anything without ``@<digits>`` at the end -> (text, None)."""
    m = re.fullmatch(r"(.+)@(\d+)", text)
    return (m.group(1), int(m.group(2))) if m else (text, None)


def selected(environments: list[EnvironmentSpec], names: list[str] | None) -> list[EnvironmentSpec]:
    """The environments that have a selected eval set, each with only those; an unknown name is refused."""
    known = [s.name for e in environments for s in e.eval_sets]
    if not known:
        raise EvalTargetError("no eval sets to evaluate: give environments with eval_sets (--config FILE)")
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise EvalTargetError(f"unknown eval set(s) {unknown}: known are {known}")
    keep = set(names or known)
    out = [e.model_copy(update={"eval_sets": [s for s in e.eval_sets if s.name in keep]}) for e in environments]
    return [e for e in out if e.eval_sets]


def default_eval_id(target: Target, environments: list[EnvironmentSpec], seed: int) -> str:
    """``<name>-eval-<6 hex>``: the same sets and seed on another step of the run land beside it."""
    sets = [s.model_dump(mode="json") for e in environments for s in e.eval_sets]
    digest = hashlib.sha256(json.dumps([sets, seed], sort_keys=True).encode()).hexdigest()[:6]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", target.name)
    return f"{name}-eval-{digest}"
