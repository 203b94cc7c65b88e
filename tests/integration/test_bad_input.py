"""Invalid parameters fail before any work, with the field named; a missing model names the path."""

from __future__ import annotations

import pytest

from rlcadence.cli import main


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("sync_every=0", "sync_every"),
        ("sync_every=-3", "sync_every"),
        ("sync_every=sometimes", "sync_every"),
        ("ref_sync_every=0", "ref_sync_every"),
        ("group_size=1", "group_size"),
        ("optimizer.lr=-0.001", "optimizer.lr"),
        ("optimizer.name=lion", "optimizer.name"),
        ("steps=0", "steps"),
        ("no_such_field=1", "no_such_field"),
    ],
)
def test_invalid_parameter_is_named_and_nothing_runs(tmp_path, capsys, override, field):
    store = tmp_path / "store"
    rc = main(["run", "--store", str(store), "--set", override])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"  {field}" in err, err
    assert not store.exists(), "no work (not even the store) may start on invalid parameters"


def test_missing_model_path_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    rc = main(["run", "--store", str(tmp_path / "store"), "--set", f"model={missing}"])
    assert rc == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_missing_config_file_is_named(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: config file {tmp_path / 'nope.yaml'} does not exist"


def test_offline_is_a_valid_cadence():
    from rlcadence.config import RLConfig

    assert RLConfig(sync_every="offline").sync_every == "offline"
