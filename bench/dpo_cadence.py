"""Paper A's cadence (arXiv 2506.21495) in miniature: offline vs semi-online (s=10) vs online DPO, and
online GRPO, held-out accuracy after the same number of steps over several seeds, without Prefect.

    .venv/bin/python bench/dpo_cadence.py                           # 30 steps x 16 prompts x 8, 3 seeds
    .venv/bin/python bench/dpo_cadence.py --steps 4 --seeds 2       # a quick look

Arms (paper A's settings; the reference model is synced with the generator, as paper A did for math DPO):

  dpo offline   rollouts always from the seed model, reference = seed model
  dpo s=10      generator and reference copy the trainer's weights every 10 steps
  dpo online    ... every step
  grpo online   group-relative policy gradient, one step per batch, no KL

A seed changes the sampling and the DPO pair choice (same seed model, same prompts). The four arms of a
seed are stepped in turn. Reported per arm: held-out greedy accuracy (mean ± sample std over seeds) at the
end and midway, mean train reward of the last 5 steps, and from the rollouts of the first and last step
the sample entropy estimate (mean -log p of the sampled tokens, T=1) and the completion length.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _loop

from rlcadence.config import RLConfig

ARMS = {
    "dpo offline": {"algorithm": "dpo", "sync_every": "offline", "ref_sync_every": "offline"},
    "dpo s=10": {"algorithm": "dpo", "sync_every": 10, "ref_sync_every": 10},
    "dpo online": {"algorithm": "dpo", "sync_every": 1, "ref_sync_every": 1},
    "grpo online": {"algorithm": "grpo", "sync_every": 1},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=None, help="AdamW lr for every arm (default: RLConfig's)")
    ap.add_argument("--dpo-beta", type=float, default=0.1)
    _loop.add_run_args(ap, steps=30, prompts=16)
    args = ap.parse_args(argv)

    _loop.start("dpo_cadence.py", args, argv)
    model = _loop.seed_model()
    mid = args.steps // 2
    acc: dict[str, dict[int, list[float]]] = {a: {mid: [], args.steps: []} for a in ARMS}
    reward: dict[str, list[float]] = {a: [] for a in ARMS}
    ent: dict[str, list[tuple[float, float]]] = {a: [] for a in ARMS}
    pairs: dict[str, list[float]] = {a: [] for a in ARMS}
    length: dict[str, list[tuple[float, float]]] = {a: [] for a in ARMS}
    initial = None
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        with _loop.temp_store() as store:
            runs = []
            for name, extra in ARMS.items():
                cfg = RLConfig.model_validate({
                    "model": str(model), "store": store, "seed": seed, "steps": args.steps,
                    "prompts_per_step": args.prompts, "group_size": args.group, "eval_size": args.eval_size,
                    "optimizer": {"lr": args.lr}, "dpo": {"beta": args.dpo_beta}, **extra,
                })
                runs.append(_loop.Run(name, cfg, model))
            if initial is None:
                initial = runs[0].evaluate(0)
                print(f"held-out accuracy before: {initial:.3f} ({args.eval_size} problems, greedy)")
            print(f"seed {seed}:")
            _loop.run_interleaved(runs, args.steps, eval_every=mid)
            for r in runs:
                for s in (mid, args.steps):
                    acc[r.name][s].append(r.evals[s]["eval/accuracy"])
                reward[r.name].append(r.mean("reward/mean", skip=max(0, args.steps - 5)))
                stats = r.rollout_stats()
                ent[r.name].append((stats[0][1], stats[-1][1]))
                length[r.name].append((stats[0][2], stats[-1][2]))
                pairs[r.name].append(r.mean("dpo/pairs"))
                r.close()
    rows = []
    for name in ARMS:
        e0 = statistics.fmean(e[0] for e in ent[name])
        e1 = statistics.fmean(e[1] for e in ent[name])
        n0 = statistics.fmean(n[0] for n in length[name])
        n1 = statistics.fmean(n[1] for n in length[name])
        p = statistics.fmean(pairs[name])
        rows.append([name, _loop.mean_sd(acc[name][mid]), _loop.mean_sd(acc[name][args.steps]),
                     " ".join(f"{a:.3f}" for a in acc[name][args.steps]), statistics.fmean(reward[name]),
                     f"{e0:.3f} -> {e1:.3f}", f"{n0:.2f} -> {n1:.2f}", "-" if p != p else f"{p:.1f}"])
    print()
    print(f"held-out accuracy before: {initial:.3f}; {args.seeds} seeds; mean ± sample std")
    print(_loop.table(["arm", f"acc after {mid}", f"acc after {args.steps}", "per seed", "train reward (last 5)",
                       "sample entropy first -> last step",
                       "completion tokens first -> last step", "DPO pairs/step"], rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
