"""`--run-id X` of an existing run: other parameters are refused naming the fields; the same resume."""

from __future__ import annotations

import json

import pytest

from rlcadence.cli import main
from rlcadence.config import RLConfig
from rlcadence.run_identity import RunIdentityError, check_run_identity, differing_fields, flatten
from rlcadence.storage import tables
from rlcadence.storage.stores import open_location


def started(store, run_id: str, **fields) -> RLConfig:
    """A run row as start_run writes it (params = the config dump + run_id + model_dir)."""
    cfg = RLConfig.model_validate({"store": str(store), "run_id": run_id, **fields})
    params = cfg.model_dump(mode="json") | {"run_id": run_id, "model_dir": "/seed"}
    tables.write_run_status(open_location(str(store)), run_id, "completed", params)
    return cfg


def test_flatten():
    assert flatten({"a": {"b": 1}, "l": [{"k": 2}], "e": []}) == {"a.b": 1, "l.0.k": 2, "e": []}


def test_same_parameters_resume(tmp_path):
    cfg = started(tmp_path, "X", steps=5)
    assert check_run_identity(cfg, open_location(str(tmp_path))) == cfg


def test_a_moved_store_is_the_same_run(tmp_path):
    cfg = started(tmp_path, "X", steps=5)
    moved = cfg.model_copy(update={"store": "elsewhere"})
    assert differing_fields(cfg.model_dump(mode="json"), moved) == []


def test_other_parameters_are_refused_naming_the_fields(tmp_path):
    started(tmp_path, "X", steps=5)
    other = RLConfig.model_validate({"store": str(tmp_path), "run_id": "X", "steps": 6,
                                     "environments": [{"name": "toy", "kind": "toy_pref"}]})
    with pytest.raises(RunIdentityError) as ei:
        check_run_identity(other, open_location(str(tmp_path)))
    msg = str(ei.value)
    assert "steps (5 -> 6)" in msg and "environments.0.kind ('arithmetic' -> 'toy_pref')" in msg
    assert "environments.0.name ('arithmetic' -> 'toy')" in msg


def test_force_new_takes_a_fresh_id_and_leaves_the_run_alone(tmp_path):
    started(tmp_path, "X", steps=5)
    started(tmp_path, "X-2", steps=5)
    loc = open_location(str(tmp_path))
    before = sorted(loc.list_files())
    other = RLConfig.model_validate({"store": str(tmp_path), "run_id": "X", "steps": 6})
    assert check_run_identity(other, loc, force_new=True).run_id == "X-3"
    assert sorted(loc.list_files()) == before


def test_cli_refuses_before_any_work(tmp_path, capsys):
    store = tmp_path / "store"
    started(store, "X", steps=5)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"steps": 6}))
    before = sorted(p for p in store.rglob("*"))
    assert main(["run", "--config", str(cfg), "--store", str(store), "--run-id", "X"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run 'X' exists in") and "steps (5 -> 6)" in err and "\n" not in err
    assert sorted(p for p in store.rglob("*")) == before
