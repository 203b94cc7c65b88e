"""The layout's promises: components import and train without Prefect, DuckDB or boto3; storage never
imports torch; flows import no torch themselves."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKED_STEP = textwrap.dedent('''
    import sys
    for name in ("prefect", "duckdb", "boto3"):
        sys.modules[name] = None  # any import of them now raises ImportError
    import torch
    from rlcadence.engines.hf import engine_from_model
    from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer
    from rlcadence.objectives import policy_loss
    from rlcadence.trainer.update import build_optimizer, pack, sft_update
    from rlcadence.config import OptimizerConfig
    tok = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=64, intermediate_size=128), tok, 0)
    before = [p.detach().clone() for p in model.parameters()]
    opt_cfg = OptimizerConfig(name="sgd", lr=0.1)
    batch = pack([[tok.bos_token_id, 5, 6]], [[7, tok.eos_token_id]], tok.pad_token_id)
    out = sft_update(model, build_optimizer(model, opt_cfg), batch, opt_cfg)
    assert out["train/loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    engine_from_model(model.eval(), tok, 1)
    print("ok", sorted(m for m in ("prefect", "duckdb", "boto3") if sys.modules.get(m) is not None))
''')


def test_components_train_without_prefect_duckdb_boto3():
    out = subprocess.run([sys.executable, "-c", BLOCKED_STEP], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok []"


def test_storage_never_imports_torch():
    code = ("import sys; import rlcadence.storage.stores, rlcadence.storage.tables, rlcadence.storage.query, "
            "rlcadence.storage.checkpoints, rlcadence.storage.results; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "False"


def _imported_roots(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_flows_import_no_torch_and_components_no_orchestration():
    for f in (REPO / "flows").glob("*.py"):
        assert not {n for n in _imported_roots(f) if n.split(".")[0] == "torch"}, f
    for pkg in ("engines", "objectives", "verifiers", "environments", "trainer", "models"):
        for f in (REPO / "rlcadence" / pkg).glob("*.py"):
            bad = {n for n in _imported_roots(f)
                   if n.split(".")[0] in ("prefect", "duckdb", "boto3")
                   or n.startswith(("rlcadence.tasks", "rlcadence.flows", "rlcadence.storage.query"))}
            assert not bad, f"{f} imports {bad}"
