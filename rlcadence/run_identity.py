"""Is ``--run-id X`` a resume of X or a different experiment? Compare the parameters X was started with.

Why: a run id names one experiment. Reusing it with other parameters would append another environment's
steps to X and prune its checkpoints, so that is refused, naming the fields that differ; the same
parameters continue X; ``--force-new`` starts a new run under a fresh id (X-2, X-3, ...), touching nothing of X.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rlcadence.config import RLConfig
from rlcadence.storage.location import StoreLocation
from rlcadence.storage.tables import read_run_params

# Where the run lives, what its id is, how its files are laid out and which server generates for it are not
# experiment parameters.
NOT_PARAMETERS = frozenset({"run_id", "store", "s3", "model_dir", "compact_every", "generator_url", "generator_server"})


class RunIdentityError(ValueError):
    """``--run-id`` names an existing run with other parameters; the message lists the fields."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [x]}`` -> ``{"a.b": 1, "l.0": x}``."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    if not out and prefix:
        out[prefix] = value  # an empty list/dict is a value too
    return out


def normalized(params: dict) -> dict:
    """Stored parameters as today's RLConfig reads them (defaults of fields added since filled in)."""
    kept = {k: v for k, v in params.items() if k not in NOT_PARAMETERS}
    try:
        return RLConfig.model_validate(kept).model_dump(mode="json")
    except ValidationError:
        return kept


def differing_fields(stored: dict, config: RLConfig) -> list[tuple[str, Any, Any]]:
    """(dotted name, stored value, new value) of each parameter that differs, sorted by name."""
    old = flatten({k: v for k, v in normalized(stored).items() if k not in NOT_PARAMETERS})
    new = flatten({k: v for k, v in config.model_dump(mode="json").items() if k not in NOT_PARAMETERS})
    absent = "<absent>"
    return [(k, old.get(k, absent), new.get(k, absent)) for k in sorted(old.keys() | new.keys())
            if old.get(k, absent) != new.get(k, absent)]


def stored_params(loc: StoreLocation, run_id: str) -> dict | None:
    try:
        return read_run_params(loc, run_id)
    except FileNotFoundError:
        return None


def fresh_id(loc: StoreLocation, run_id: str) -> str:
    n = 2
    while stored_params(loc, f"{run_id}-{n}") is not None:
        n += 1
    return f"{run_id}-{n}"


def check_run_identity(config: RLConfig, loc: StoreLocation, force_new: bool = False) -> RLConfig:
    """``config`` unchanged (a new id, or a resume with the same parameters), with a fresh run id
    (``force_new`` and the id exists), or RunIdentityError naming the differing fields."""
    if config.run_id is None:
        return config
    stored = stored_params(loc, config.run_id)
    if stored is None:
        return config
    if force_new:
        return config.model_copy(update={"run_id": fresh_id(loc, config.run_id)})
    diff = differing_fields(stored, config)
    if diff:
        shown = ", ".join(f"{k} ({old!r} -> {new!r})" for k, old, new in diff[:8])
        more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
        raise RunIdentityError(
            f"run {config.run_id!r} exists in {loc.uri} with other parameters: {shown}{more}. "
            f"Use the same parameters to resume it, another --run-id, or --force-new for a fresh id")
    return config
