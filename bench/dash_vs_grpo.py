"""DASH (paper B, arXiv 2505.17218) against per-micro-batch GRPO, on the embedded task, without Prefect.

    .venv/bin/python bench/dash_vs_grpo.py                            # 64 prompts x 8 samples, 30 steps
    .venv/bin/python bench/dash_vs_grpo.py --steps 5 --prompts 16     # a quick look

Arms, from the same seed model, same seeds, same loss (token_sum_norm, DASH's advantage: unbiased std,
eps 1e-4), same micro-batch size (gradient accumulation); they differ only in DASH's two mechanisms:

  grpo       samples per micro-batch (``generation_batch_prompts`` = micro-batch / G prompts per engine
             call, what TRL-style GRPO does) and back-propagates every row;
  presample  all M x G samples in one engine call (DASH pre-sampling), every row back-propagated;
  dash       pre-sampling + gradient filtering (keep a row iff |A| > tau, tau = 0.1).

The arms are stepped in turn (step t of each before step t+1 of any), so load from other jobs on a shared
machine falls on all alike. Reported per step: engine seconds (generation only), update seconds (forward,
backward, optimizer; no checkpoint), rows back-propagated; at the end held-out greedy accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time

import _loop

from rlcadence.config import RLConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--micro", type=int, default=32, help="rows per backward pass (both arms)")
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=None, help="AdamW lr (default: RLConfig's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="grpo,presample,dash")
    _loop.add_run_args(ap, steps=30, prompts=64)
    args = ap.parse_args(argv)
    if args.micro % args.group:
        sys.exit("--micro must be a multiple of --group (a micro-batch of whole prompts)")

    _loop.start("dash_vs_grpo.py", args, argv)
    model = _loop.seed_model()
    common = {
        "model": str(model), "seed": args.seed, "steps": args.steps, "prompts_per_step": args.prompts,
        "group_size": args.group, "micro_batch_size": args.micro, "eval_size": args.eval_size,
        "policy_loss": {"aggregation": "token_sum_norm"}, "advantage": {"unbiased_std": True, "eps": 1e-4},
        "optimizer": {"lr": args.lr},
    }
    arms = {
        "grpo": {"generation_batch_prompts": args.micro // args.group},
        "presample": {},
        "dash": {"filter": {"tau": args.tau}},
    }
    t0 = time.perf_counter()
    with _loop.temp_store() as store:
        runs = [_loop.Run(name, RLConfig.model_validate(common | {"store": store} | arms[name]), model)
                for name in args.arms.split(",")]
        initial = runs[0].evaluate(0)
        print(f"held-out accuracy before: {initial:.3f} ({args.eval_size} problems, greedy)")
        _loop.run_interleaved(runs, args.steps, eval_every=max(1, args.steps // 3))
        rows = []
        for r in runs:
            n = len(r.steps)
            gen, train = r.total("time/generate_s") / n, r.total("time/train_s") / n
            wall = (r.total("wall/generate_s") + r.total("wall/score_s") + r.total("wall/train_s")) / n
            calls = -(-args.prompts // (r.cfg.generation_batch_prompts or args.prompts))
            rows.append([r.name, calls, gen, train, gen + train, wall, r.mean("train/rows_backpropagated"),
                         r.mean("rollout/kept_fraction"), r.mean("reward/mean"), r.evals[args.steps]["eval/accuracy"]])
        print()
        print(_loop.table(["arm", "engine calls/step", "generate s/step", "train s/step", "gen+train s/step",
                           "wall s/step (all stages)", "rows backprop/step", "kept fraction", "mean reward",
                           f"held-out acc after {args.steps}"], rows))
        by = {row[0]: row for row in rows}
        if "grpo" in by and "dash" in by:
            g, d = by["grpo"], by["dash"]
            print(f"\ngen+train time, grpo / dash: {g[4] / d[4]:.2f}x  (generate {g[2] / d[2]:.2f}x, "
                  f"train {g[3] / d[3]:.2f}x); DASH saves {100 * (1 - d[4] / g[4]):.0f}% of it")
        if "grpo" in by and "presample" in by:
            g, p = by["grpo"], by["presample"]
            print(f"pre-sampling alone: generate {g[2] / p[2]:.2f}x faster; filtering alone (presample -> dash): "
                  f"train {p[3] / by['dash'][3]:.2f}x faster" if "dash" in by else "")
        for r in runs:
            r.close()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
