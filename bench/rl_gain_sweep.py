"""Does RL improve held-out accuracy of the bootstrap model? A sweep over the knobs that matter.

Runs GRPO (no Prefect, so the figures are the work itself) from one bootstrap checkpoint for each
setting and prints greedy held-out exact match before and every --eval-every steps after.

    .venv/bin/python bench/rl_gain_sweep.py [--model DIR | --bootstrap-seed N] --steps 800 \
        --setting '{"optimizer": {"lr": 1e-4}}' --setting '{"optimizer": {"lr": 3e-4}}'

Without --model, a bootstrap model is trained first (BootstrapConfig defaults) and cached in /tmp.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlcadence.config import BootstrapConfig, RLConfig
from rlcadence.engines.hf import TransformersEngine, engine_from_model
from rlcadence.environments.arithmetic import make_splits, verify_sum
from rlcadence.evaluation import heldout_accuracy
from rlcadence.models.bootstrap import bootstrap_key, train_bootstrap
from rlcadence.objectives import gradient_filter_mask, group_advantages
from rlcadence.prompts import encode_prompts
from rlcadence.trainer.update import build_optimizer, pack, policy_update


def held_out(model, tokenizer, heldout, cfg: RLConfig) -> float:
    engine = engine_from_model(model.eval(), tokenizer, 0)
    return heldout_accuracy(engine, encode_prompts(tokenizer, [p.prompt for p in heldout]), [p.gold for p in heldout], verify_sum,
                            cfg.eval_sampling)["eval/accuracy"]


def run(model_dir: Path, cfg: RLConfig, eval_every: int) -> list[tuple[int, float, float]]:
    """[(step, sampled reward of the step, held-out accuracy)] for one setting."""
    engine = TransformersEngine(model_dir)
    tok = engine.tokenizer
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = build_optimizer(model, cfg.optimizer)
    t = cfg.bootstrap.environment
    train, heldout = make_splits(t.split_seed, t.digits, t.n_heldout)
    heldout = heldout[: cfg.eval_size]
    curve = [(0, float("nan"), held_out(model, tok, heldout, cfg))]
    m, g = cfg.prompts_per_step, cfg.group_size
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.optimizer.lr_at(step)
        engine.load_state_dict(model.state_dict(), step)  # online: generator synced every step
        problems = train.batch(step * m, m)
        ids = encode_prompts(tok, [p.prompt for p in problems])
        groups = engine.generate(ids, g, cfg.sampling.model_copy(update={"seed": step}))
        flat = [c for grp in groups for c in grp]
        golds = [p.gold for p in problems for _ in range(g)]
        rewards = torch.tensor([r.reward for r in verify_sum([c.text for c in flat], golds)], dtype=torch.float64)
        adv = group_advantages(rewards, g, cfg.advantage).float()
        kept = gradient_filter_mask(adv, cfg.filter.tau)
        prompt_ids = [p for p in ids for _ in range(g)]
        batch = pack(prompt_ids, [c.token_ids for c in flat], tok.pad_token_id, [c.logprobs for c in flat])
        policy_update(model, optimizer, batch, adv, kept, cfg, max_completion_len=cfg.sampling.max_new_tokens)
        if (step + 1) % eval_every == 0:
            curve.append((step + 1, float(rewards.mean()), held_out(model, tok, heldout, cfg)))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap model when --model is not given")
    ap.add_argument("--setting", action="append", default=[], help="JSON RLConfig overrides")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model_dir = args.model
    if model_dir is None:
        boot = BootstrapConfig(seed=args.bootstrap_seed)
        model_dir = Path("/tmp") / f"rlcadence-{bootstrap_key(boot)}"
        if not (model_dir / "config.json").exists():
            print(train_bootstrap(boot, model_dir))
    settings = args.setting or ['{"optimizer": {"lr": 1e-4}}']
    print(f"model {model_dir}, {args.steps} steps per setting")
    for text in settings:
        cfg = RLConfig.model_validate({"steps": args.steps, **json.loads(text)})
        t0 = time.perf_counter()
        curve = run(model_dir, cfg, args.eval_every)
        points = "  ".join(f"{s}:{acc:.3f}" for s, _, acc in curve)
        print(f"{text:<70} held-out by step {points}   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
