"""SGD vs AdamW (paper C, arXiv 2602.07729) for RL (GRPO) and for SFT, from the same checkpoint, without Prefect.

    .venv/bin/python bench/sgd_vs_adamw.py                          # 40 steps x 32 prompts x 8 samples
    .venv/bin/python bench/sgd_vs_adamw.py --steps 5 --prompts 8    # a quick look

Four arms (GRPO / SFT x SGD / AdamW), each in its own process so that its peak resident memory is its own.
SFT trains on the gold answers of the same prompts the RL arms sample (rlcadence's ``algorithm=sft``).
Reported: held-out greedy accuracy before/after, the fraction of parameters changed after casting both
checkpoints to bf16 (|delta| > 1e-5; tied embedding counted once; master weights float32), optimizer state
bytes, peak RSS, and the mean cosine between Adam's first moment and the fresh gradient (paper C: ~1 in
SFT, ~0 in RL). Learning rates default to RLConfig's per-optimizer defaults (``--sgd-lr``/``--adamw-lr``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import _loop

from rlcadence.config import RLConfig


def arm(algorithm: str, optimizer: str, args: argparse.Namespace, model_dir: str, out) -> None:
    """One arm in a child process: its metrics go back through ``out`` (a Queue)."""
    _loop.set_threads(args.threads)
    lr = args.sgd_lr if optimizer == "sgd" else args.adamw_lr
    with _loop.temp_store() as store:
        cfg = RLConfig.model_validate({
            "model": model_dir, "store": store, "seed": args.seed, "steps": args.steps, "algorithm": algorithm,
            "prompts_per_step": args.prompts, "group_size": args.group, "eval_size": args.eval_size,
            "optimizer": {"name": optimizer, "lr": lr},
        })
        run = _loop.Run(f"{algorithm}-{optimizer}", cfg, model_dir)
        t0 = time.perf_counter()
        for step in range(args.steps):
            run.step(step)
        acc = run.evaluate(args.steps)
        last = run.steps[-1]
        out.put({
            "arm": run.name, "lr": cfg.optimizer.resolved_lr, "accuracy": acc,
            "changed": 1.0 - last["sparsity/unchanged_vs_initial"], "changed_n": last["sparsity/changed_vs_initial"],
            "params": last["sparsity/parameters"], "opt_bytes": last["memory/optimizer_state_bytes"],
            "peak_rss": last["memory/peak_rss_bytes"], "cosine": run.mean("train/adam_grad_cosine", skip=1),
            "reward": run.mean("reward/mean"), "seconds": time.perf_counter() - t0,
        })
        run.close()


def baseline(args: argparse.Namespace, model_dir: str, out) -> None:
    """Peak RSS of a process that only loads the model and evaluates it (the floor under every arm)."""
    _loop.set_threads(args.threads)
    with _loop.temp_store() as store:
        cfg = RLConfig.model_validate({"model": model_dir, "store": store, "eval_size": args.eval_size})
        run = _loop.Run("eval-only", cfg, model_dir)
        acc = run.evaluate(0)
        from rlcadence.trainer.diagnostics import peak_memory_bytes

        out.put({"arm": "before (eval only)", "accuracy": acc, "peak_rss": float(peak_memory_bytes())})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sgd-lr", type=float, default=None, help="default: RLConfig's SGD default")
    ap.add_argument("--adamw-lr", type=float, default=None, help="default: RLConfig's AdamW default")
    ap.add_argument("--seed", type=int, default=0)
    _loop.add_run_args(ap, steps=40, prompts=32)
    args = ap.parse_args(argv)

    _loop.start("sgd_vs_adamw.py", args, argv)
    model_dir = str(_loop.seed_model())
    ctx = mp.get_context("spawn")
    results = []
    t0 = time.perf_counter()
    jobs = [(baseline, (args, model_dir))] + [
        (arm, (alg, opt, args, model_dir)) for alg in ("grpo", "sft") for opt in ("sgd", "adamw")
    ]
    for fn, fn_args in jobs:
        q = ctx.Queue()
        p = ctx.Process(target=fn, args=(*fn_args, q))
        p.start()
        res = q.get()
        p.join()
        results.append(res)
        print(f"  {res['arm']}: held-out {res['accuracy']:.3f}"
              + (f", {100 * res['changed']:.2f}% of parameters changed in bf16, {res['seconds']:.0f} s" if "changed" in res else ""))
    base = results[0]
    rows = [[base["arm"], "-", base["accuracy"], "-", "-", "-", f"{base['peak_rss'] / 2**20:.0f}", "-", "-"]]
    for r in results[1:]:
        rows.append([r["arm"], f"{r['lr']:g}", r["accuracy"], f"{100 * r['changed']:.3f}%",
                     f"{int(r['changed_n'])} / {int(r['params'])}", f"{r['opt_bytes'] / 2**20:.2f}",
                     f"{r['peak_rss'] / 2**20:.0f}", "-" if r["cosine"] != r["cosine"] else f"{r['cosine']:.3f}",
                     r["reward"]])
    print()
    print(_loop.table(["arm", "lr", f"held-out acc after {args.steps}", "params changed (bf16)", "changed / total",
                       "optimizer state MiB", "peak RSS MiB", "cos(Adam m, grad)", "mean train reward"], rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
