"""Careless input to the CLI: one line on stderr naming the file (and position), exit 2, no traceback."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlcadence.cli import main
from rlcadence.environments.datasets import DatasetError, PromptSource, load_prompts


def refusal(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("broken.yaml", "steps: [1,\n  lr: 3\n", "broken.yaml:3:1: invalid YAML"),
        ("tabs.yaml", "steps: 3\n\tlr: 1\n", "tabs.yaml:2:1: invalid YAML"),
        ("broken.json", '{"steps": 3,,}', "broken.json:1:13: invalid JSON"),
        ("list.yaml", "- 1\n- 2\n", "list.yaml: the top level must be a mapping of RLConfig fields, got list"),
        ("scalar.json", "3", "scalar.json: the top level must be a mapping of RLConfig fields, got int"),
    ],
)
def test_bad_config_files(tmp_path, capsys, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    err = refusal(capsys, "run", "--config", str(path), "--store", str(tmp_path / "s"))
    assert err.startswith(f"error: {tmp_path}/{expected}"), err


def test_bad_config_file_message_has_file_and_position(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text('{\n  "steps": 3\n  "seed": 1\n}')
    err = refusal(capsys, "run", "--config", str(path), "--store", str(tmp_path / "s"))
    assert err.startswith(f"error: {path}:3:3: invalid JSON"), err


def test_a_non_utf8_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"steps: \xff\n")
    assert refusal(capsys, "run", "--config", str(path)) == f"error: {path}: not UTF-8 text (byte 7)"


def corrupt_parquet(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["1+1"] * 1000, "gold": ["2"] * 1000}), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(data[: len(data) // 2] + data[-8:])  # footer kept, pages cut: fails while reading
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    return bad, garbage


def test_corrupt_parquet_dataset_names_the_file(tmp_path):
    for path in corrupt_parquet(tmp_path):
        with pytest.raises(DatasetError, match=f"^{path}: not a readable Parquet file"):
            load_prompts(PromptSource(path=path))


def test_corrupt_parquet_dataset_through_the_cli(tmp_path, capsys):
    _, garbage = corrupt_parquet(tmp_path)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"environments": [{"name": "m", "kind": "dataset", "source": {"path": str(garbage)},
                                                 "verifier": "math"}]}))
    err = refusal(capsys, "run", "--config", str(cfg), "--store", str(tmp_path / "s"))
    assert err.startswith(f"error: {garbage}: not a readable Parquet file"), err
    assert not (tmp_path / "s" / "runs").exists()


def test_corrupt_parquet_in_the_store_names_the_file(tmp_path, capsys):
    from rlcadence.storage import tables
    from rlcadence.storage.stores import open_location

    loc = open_location(str(tmp_path / "store"))
    tables.write_metrics(loc, "r1", 0, {"reward_mean": 0.5})
    bad = tmp_path / "store" / "metrics" / "run_id=r1" / "step=0" / "part-0.parquet"
    bad.write_bytes(b"garbage")
    err = refusal(capsys, "sql", "SELECT 1", "--store", str(tmp_path / "store"))
    assert err.startswith(f"error: {bad}: not a readable Parquet file"), err


def test_a_refusal_imports_neither_torch_nor_transformers_nor_prefect(tmp_path):
    """Validation runs on pydantic alone: importing torch+transformers cost 8 s or more per refusal."""
    import subprocess
    import sys

    code = ("import sys; from rlcadence.cli import main; rc = main(['run', '--store', sys.argv[1], '--set', "
            "'steps=true']); heavy = [m for m in ('torch', 'transformers', 'prefect', 'duckdb', 'boto3') "
            "if m in sys.modules]; print(rc, heavy)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    assert "steps: Value error, must be a number, not a boolean" in proc.stderr
