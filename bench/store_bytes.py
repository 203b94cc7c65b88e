"""Bytes the main job writes to the store per step, and step wall time, for checkpoint_every = 1 vs k.

Runs the README main job's configuration (online GRPO, M=32 x G=8, the embedded seed model) for --steps
steps per arm, interleaved, counting every byte the stages hand to the store (Parquet files, metrics rows,
checkpoint directories) and the wall time of the train stage, where checkpointing happens.

    .venv/bin/python bench/store_bytes.py --steps 40 --every 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loop import Run, add_run_args, run_interleaved, seed_model, start, table, temp_store  # noqa: E402

from rlcadence.config import RLConfig  # noqa: E402


def count_bytes(loc) -> dict[str, int]:
    """Wrap this location's writes so every byte published to the store is counted, by top-level folder."""
    counts: dict[str, int] = {}
    write_bytes, put_dir = loc.write_bytes, loc.put_dir

    def counted_write(data: bytes, *parts: str) -> str:
        counts[parts[0]] = counts.get(parts[0], 0) + len(data)
        return write_bytes(data, *parts)

    def counted_put(local_dir: Path, *parts: str) -> str:
        size = sum(p.stat().st_size for p in Path(local_dir).rglob("*") if p.is_file())
        counts[parts[0]] = counts.get(parts[0], 0) + size
        return put_dir(local_dir, *parts)

    object.__setattr__(loc, "write_bytes", counted_write)  # the location is a frozen dataclass
    object.__setattr__(loc, "put_dir", counted_put)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_run_args(ap, steps=40, prompts=32)
    ap.add_argument("--every", type=int, default=10, help="checkpoint_every of the second arm")
    args = ap.parse_args(argv)
    start("store_bytes.py", args, argv)
    model = seed_model()
    rows = []
    with temp_store() as store_a, temp_store() as store_b:
        arms = []
        for every, store in ((1, store_a), (args.every, store_b)):
            cfg = RLConfig(store=store, steps=args.steps, prompts_per_step=args.prompts, group_size=args.group,
                           checkpoint_every=every, eval_every=10**6, eval_size=args.eval_size)
            run = Run(f"every{every}", cfg, model)
            arms.append((every, run, count_bytes(run.run.loc)))
        run_interleaved([a[1] for a in arms], args.steps, log=lambda _m: None)
        for every, run, counts in arms:
            run.run.writer.wait()
            total = sum(counts.values())
            rows.append([every, total / args.steps / 1e6, counts.get("checkpoints", 0) / args.steps / 1e6,
                         (counts.get("rollouts", 0) + counts.get("staging", 0)) / args.steps / 1e6,
                         run.mean("wall/train_s"), run.mean("time/checkpoint_s")])
            run.close()
    print(table(["checkpoint_every", "MB written / step", "checkpoints MB / step", "rollouts+staging MB / step",
                 "train stage wall s / step", "checkpoint copy s (when due)"], rows))
    print(f"bytes per step ratio (every=1 / every={args.every}): {rows[0][1] / rows[1][1]:.1f}x")


if __name__ == "__main__":
    main()
