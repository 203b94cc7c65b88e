"""Cost of an eval set: samples per second of evaluate_sets on the tiny model, and of maj@k's answer keys.

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_sets.py [--prompts 500] [--k 8] [--answers 2000]

Part 1: the embedded task's 500 held-out problems as a JSONL eval set of the arithmetic environment, on the
tiny Llama (2 layers, hidden 128, random init: the cost does not depend on what it learnt), greedy k=1 and
paper A's T=0.6 / top-p 0.9 with k samples; 6 new tokens, as the main job's evaluation. Part 2: answer keys
(Math-Verify parse in a 1-worker pool) of realistic boxed completions (bench/verifier_throughput.py's mix).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=500)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--answers", type=int, default=2000)
    args = p.parse_args()

    import torch
    from verifier_throughput import make_answers

    from rlcadence.engines.hf import engine_from_model
    from rlcadence.environments.arithmetic import make_splits
    from rlcadence.environments.mix import open_environments
    from rlcadence.environments.spec import EnvironmentSpec
    from rlcadence.evaluation import evaluate_sets
    from rlcadence.models.config import TinyModelConfig
    from rlcadence.models.tiny import build_model, build_tokenizer
    from rlcadence.verifiers.answers import answer_keys

    print(f"machine: {platform.machine()}, torch threads {torch.get_num_threads()}, python {platform.python_version()}")
    tok = build_tokenizer()
    model = build_model(TinyModelConfig(), tok, 0).eval()
    engine = engine_from_model(model, tok, 0)
    _, heldout = make_splits(1234, 3, args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heldout.jsonl"
        path.write_text("".join(json.dumps({"prompt": q.prompt, "gold": q.gold}) + "\n" for q in heldout))
        for label, extra in (("greedy k=1", {}), (f"paper_a k={args.k}", {"sampling": "paper_a", "k": args.k})):
            sampling = extra.pop("sampling", "greedy")
            spec = EnvironmentSpec(eval_sets=[{"name": "h", "source": {"path": str(path)}, "k": 1, **extra,
                                               "sampling": {"preset": sampling, "max_new_tokens": 6}}])
            envs = open_environments([spec], 0, 1234, 3, 500, tok, training_rows=False)
            t0 = time.perf_counter()
            out = evaluate_sets(engine, envs, tok, run_seed=0, step=0, model="bench", run_id="bench")
            dt = time.perf_counter() - t0
            print(f"{label}: {len(out.rows)} samples in {dt:.2f} s = {len(out.rows) / dt:.0f} samples/s "
                  f"(pass@1 {out.metrics['eval/h/pass_at_1']:.3f})")
    completions, _ = make_answers(args.answers)
    answer_keys(completions[:4])  # pool start-up (SymPy import) outside the timing
    t0 = time.perf_counter()
    keys = answer_keys(completions)
    dt = time.perf_counter() - t0
    print(f"answer keys: {len(keys)} boxed completions in {dt:.2f} s = {len(keys) / dt:.0f} /s "
          f"({len(set(keys))} distinct keys)")


if __name__ == "__main__":
    main()
