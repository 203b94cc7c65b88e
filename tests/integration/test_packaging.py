"""The card's layout as installed: a plain wheel carries rlcadence.flows/tasks/storage and nothing generic;
prefect.yaml deploys from the top-level flows/."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_wheel_installs_namespaced_layers_only(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = wheels.glob("rlcadence-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    code = ("import importlib, rlcadence.flows.rl, rlcadence.flows.bootstrap, rlcadence.flows.eval, rlcadence.tasks.train, "
            "rlcadence.storage.query\n"
            "print(rlcadence.flows.rl.__file__)\n"
            "for name in ('tasks', 'storage', 'flows'):\n"
            "    try:\n        importlib.import_module(name)\n        print('importable', name)\n"
            "    except ModuleNotFoundError:\n        pass\n")
    # the wheel's own copy of rlcadence, with the dependencies of this environment beside it
    env = os.environ | {"PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(str(venv)), lines  # imported from the installed wheel, not the checkout
    assert lines[1:] == [], f"generic top-level modules installed: {lines[1:]}"


def test_prefect_deploy_all_from_the_checkout(prefect_server, tmp_path):
    prefect = Path(sys.executable).parent / "prefect"
    env = os.environ | {"PREFECT_API_URL": prefect_server, "RLCADENCE_HOME": str(REPO)}
    pool = subprocess.run([str(prefect), "work-pool", "create", "rlcadence", "--type", "process"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert pool.returncode == 0 or "already exists" in pool.stdout + pool.stderr, pool.stdout + pool.stderr
    out = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    listed = subprocess.run([str(prefect), "deployment", "ls"], capture_output=True, text=True, timeout=300, env=env)
    assert "rlcadence-rl/rl" in listed.stdout and "rlcadence-bootstrap/bootstrap" in listed.stdout, listed.stdout
    assert "rlcadence-eval/eval" in listed.stdout, listed.stdout
