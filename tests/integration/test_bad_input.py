"""Invalid parameters fail before any work, with the field named; a missing model names the path."""

from __future__ import annotations

import pytest

from rlcadence.cli import main
from tests.fixtures.random_models import random_models  # noqa: F401 - fixture


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


# ---------------------------------------------------------------- model directories and over-long prompts


def _copy_model(src, dst, file, **changes):
    import json
    import shutil

    shutil.copytree(src, dst)
    (dst / file).write_text(json.dumps(json.loads((dst / file).read_text()) | changes))
    return dst


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_unknown_architecture_is_one_line_naming_the_path(tmp_path, capsys, random_models):  # noqa: F811
    model = _copy_model(random_models["qwen2"], tmp_path / "mystery", "config.json", model_type="mystery_lm",
                        architectures=["MysteryForCausalLM"])
    rc = main(["run", "--store", str(tmp_path / "store"), "--set", f"model={model}"])
    assert rc == 2
    _one_line_error(capsys, str(model), "MysteryForCausalLM")
    assert not (tmp_path / "store").exists()


def test_tokenizer_without_eos_is_one_line_naming_the_path(tmp_path, capsys, random_models):  # noqa: F811
    model = _copy_model(random_models["qwen2"], tmp_path / "no-eos", "tokenizer_config.json", eos_token=None)
    rc = main(["run", "--store", str(tmp_path / "store"), "--set", f"model={model}"])
    assert rc == 2
    _one_line_error(capsys, str(model), "no EOS")
    assert not (tmp_path / "store").exists()


def test_over_long_prompt_fails_by_default_naming_environment_file_and_line(tmp_path, capsys, random_models):  # noqa: F811
    import json

    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "1+1=", "gold": "2"}, {"prompt": "x" * 200_000, "gold": "0"}, {"prompt": "2+2=", "gold": "4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = [{"name": "sums", "kind": "dataset", "verifier": "exact_match", "source": {"path": str(data)}}]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": str(random_models["qwen2"]), "store": str(tmp_path / "store"),
                               "environments": env, "sampling": {"max_new_tokens": 6}}))
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    # no max_prompt_tokens given: the model's 256 positions - 6 new tokens; the chat markup counts too
    assert "environment 'sums'" in err and str(data) in err and "line 2: prompt has" in err, err
    assert "max_prompt_tokens=250 (the default" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists(), "refused before the run row or checkpoint 0"


@pytest.mark.parametrize("address", ["127.0.0.1:{closed}", "192.0.2.1:6379"])  # refused; blackholed (TEST-NET-1)
def test_unreachable_ray_address_fails_fast_naming_it(tmp_path, capsys, address):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = address.format(closed=s.getsockname()[1])
    store = tmp_path / "store"
    t0 = time.monotonic()
    rc = main(["run", "--store", str(store), "--set", "runner=ray", "--set", f"ray_address={address}"])
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 15
    assert rc == 2 and err.count("\n") == 1, err
    assert f"ray_address='{address}'" in err and "Traceback" not in err
    assert not store.exists(), "no work may start before the cluster answers"


def test_max_staleness_for_offline_dpo_is_refused_saying_why(tmp_path, capsys):
    rc = main(["run", "--store", str(tmp_path / "store"), "--set", "algorithm=dpo", "--set", "sync_every=offline",
               "--set", "max_staleness=2"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_staleness=2 does nothing for offline DPO" in err, err
