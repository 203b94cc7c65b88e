"""How bad input is answered: each class of careless or hostile input, what the user sees, how long it takes.

Runs the installed ``rlcadence`` command in a subprocess (Python start-up and imports included, as a user
sees it) ``--reps`` times per case and prints a Markdown table with the median wall time and the median CPU
time of the child (user + sys: what the wall time is on an idle machine; the load average is printed). Every case must
exit 2 with one line on stderr; the script says so when one does not. Target: under 2 s each.

    .venv/bin/python bench/bad_input.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "rlcadence")


def setup(work: Path) -> dict[str, list[str]]:
    """The cases: name -> argv. Builds the files they need under ``work``."""
    import pyarrow as pa

    from rlcadence.config import RLConfig
    from rlcadence.storage import tables
    from rlcadence.storage.stores import open_location

    store = work / "store"
    loc = open_location(str(store))
    tables.write_metrics(loc, "r1", 0, {"reward_mean": 0.5})
    tables.write_step_table(loc, "rollouts", "r1", 0, pa.Table.from_pylist([{"run_id": "r1", "step": 0}]))
    cfg = RLConfig.model_validate({"store": str(store), "run_id": "X", "steps": 5})
    tables.write_run_status(loc, "X", "completed", cfg.model_dump(mode="json") | {"run_id": "X"})
    (work / "broken.yaml").write_text("steps: [1,\n  lr: 3\n")
    (work / "list.json").write_text("[1, 2]")
    (work / "garbage.parquet").write_bytes(b"not parquet")
    (work / "dataset.json").write_text(json.dumps({"environments": [
        {"name": "m", "kind": "dataset", "source": {"path": str(work / "garbage.parquet")}, "verifier": "math"}]}))
    s = str(store)
    return {
        "invalid value (steps=0)": ["run", "--store", s, "--set", "steps=0"],
        "non-finite float (optimizer.lr=Infinity)": ["run", "--store", s, "--set", "optimizer.lr=Infinity"],
        "boolean as number (steps=true)": ["run", "--store", s, "--set", "steps=true"],
        "unknown field": ["run", "--store", s, "--set", "no_such_field=1"],
        "broken YAML config": ["run", "--store", s, "--config", str(work / "broken.yaml")],
        "non-mapping JSON config": ["run", "--store", s, "--config", str(work / "list.json")],
        "missing config file": ["run", "--store", s, "--config", str(work / "nope.yaml")],
        "missing model path": ["run", "--store", s, "--set", f"model={work / 'no-model'}"],
        "corrupt Parquet dataset": ["run", "--store", s, "--config", str(work / "dataset.json")],
        "--run-id of a run with other parameters": ["run", "--store", s, "--run-id", "X", "--set", "steps=6"],
        "SQL that writes (COPY TO the store)": ["sql", "--store", s, f"COPY (SELECT 1) TO '{s}/rollouts/x.parquet'"],
        "SQL that reads outside (read_csv /etc/passwd)": ["sql", "--store", s, "SELECT * FROM read_csv('/etc/passwd')"],
        "SQL INSTALL httpfs": ["sql", "--store", s, "INSTALL httpfs"],
        "SQL syntax error": ["sql", "--store", s, "SELEC 1"],
        "runaway SQL (--timeout 1)": ["sql", "--store", s, "--timeout", "1",
                                      "SELECT count(*) FROM range(100000000) a, range(100000000) b"],
        "sql on a missing store": ["sql", "--store", str(work / "nowhere"), "SELECT 1"],
    }


def timed(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and CPU seconds (user + sys of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlc-bad-input-") as tmp:
        cases = setup(Path(tmp))
        print("| bad input | exit | what the user sees (stderr; first line, or the first two for parameter errors) | "
              f"wall, median of {args.reps} | CPU (user+sys), median |\n|---|---:|---|---:|---:|")
        for name, argv in cases.items():
            times, cpus, proc = [], [], None
            for _ in range(args.reps):
                wall, cpu, proc = timed([CLI, *argv])
                times.append(wall)
                cpus.append(cpu)
            lines = proc.stderr.strip().splitlines()
            shown = " ".join(x.strip() for x in lines[:2]) if lines and lines[0].endswith(":") else (lines or [""])[0]
            seen = shown.replace(tmp, "<tmp>").replace("|", "\\|")
            if len(seen) > 110:
                seen = seen[:107] + "..."
            flag = "" if proc.returncode == 2 and len(lines) <= 1 + 5 else " (!)"
            print(f"| {name} | {proc.returncode}{flag} | `{seen}` | {statistics.median(times):.2f} s | "
                  f"{statistics.median(cpus):.2f} s |")
        for name, code in (("reference: `python -c pass`", "pass"),
                           ("reference: `import torch, transformers` (what a refusal used to pay)",
                            "import torch, transformers")):
            runs = [timed([sys.executable, "-c", code]) for _ in range(args.reps)]
            print(f"| {name} | | | {statistics.median(r[0] for r in runs):.2f} s | "
                  f"{statistics.median(r[1] for r in runs):.2f} s |")
        print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
