"""One RL optimizer step from the step's committed rollouts: the update and the trainer's bookkeeping.

The same function serves the train stage and resume: replaying step ``t`` after a crash reads the rollouts
that step ``t`` committed (prompt and completion tokens, generator log-probs, advantages, kept flags) and
applies the identical update, so the policy comes back bitwise without generating or scoring again.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from rlcadence.config import RLConfig, checkpoint_due, is_due
from rlcadence.environments.mix import Environment
from rlcadence.objectives import PairSelection, select_pairs_scored, select_pairs_verifiable
from rlcadence.prompts import pad_token_id
from rlcadence.seeding import derive_seed
from rlcadence.storage import tables
from rlcadence.trainer.replica import grpo_inputs
from rlcadence.trainer.update import MicroBatching, dpo_update, pack, policy_update, sft_update

if TYPE_CHECKING:
    from rlcadence.run_state import Policy, RunState


def dpo_pairs(envs: list[Environment], rows: list[dict], group_size: int, seed: int) -> PairSelection:
    """Pairs within each environment: verifiable -> random correct vs random incorrect; scored -> best vs worst."""
    rng = random.Random(seed)
    chosen, rejected, skipped = [], [], 0
    for env in envs:
        idx = [i for i, r in enumerate(rows) if r["environment"] == env.spec.name]
        if not idx:
            continue
        rewards = torch.tensor([rows[i]["reward"] for i in idx])
        sel = (select_pairs_verifiable(rewards, group_size, rng) if env.spec.verifiable
               else select_pairs_scored(rewards, group_size))
        chosen += [idx[i] for i in sel.chosen]
        rejected += [idx[i] for i in sel.rejected]
        skipped += sel.skipped_groups
    return PairSelection(chosen, rejected, skipped)


def needs_reference(cfg: RLConfig) -> bool:
    return cfg.algorithm == "dpo" or cfg.policy_loss.kl_beta > 0


def update(run: RunState, policy: Policy, step: int) -> dict[str, float]:
    """The algorithm's update (SFT, DPO or GRPO/PPO) over the step's rollout rows."""
    cfg = run.config
    rows = tables.read_step_table(run.loc, "rollouts", run.run_id, step).to_pylist()
    tok = policy.tokenizer
    prompt_ids = [r["prompt_token_ids"] for r in rows]  # as generated: never re-tokenised
    completion_ids = [r["token_ids"] for r in rows]
    ref = run.reference_at(policy.state.ref_version) if needs_reference(cfg) else None
    try:
        if cfg.algorithm == "sft":
            gold_ids = [tok(r["gold"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                        for r in rows[:: cfg.group_size]]
            batch = pack(prompt_ids[:: cfg.group_size], gold_ids, pad_token_id(tok))
            return sft_update(policy.model, policy.optimizer, batch, cfg.optimizer, MicroBatching.of(cfg))
        if cfg.algorithm == "dpo":
            pairs = dpo_pairs(run.environments(), rows, cfg.group_size, derive_seed(cfg.seed, step, "pairs"))
            pick = lambda idx: pack([prompt_ids[i] for i in idx], [completion_ids[i] for i in idx], pad_token_id(tok))  # noqa: E731
            out = dpo_update(policy.model, policy.optimizer, pick(pairs.chosen), pick(pairs.rejected), ref, cfg)
            out["dpo/skipped_groups"] = float(pairs.skipped_groups)
            return out
        if policy.trainer is not None:  # train_world_size > 1: every rank takes its share of these rows
            metrics = policy.trainer.train(step, checkpoint_due(cfg, step + 1), rows)
            policy.refresh()
            return metrics
        batch, advantages, kept = grpo_inputs(rows, pad_token_id(tok))
        return policy_update(policy.model, policy.optimizer, batch, advantages, kept, cfg, ref,
                             max_completion_len=cfg.sampling.max_new_tokens)
    finally:
        run.release_reference()


def advance(run: RunState, policy: Policy, step: int) -> dict[str, float]:
    """Optimizer step ``step`` -> ``step + 1`` on the stored rollouts of ``step``, then the sync bookkeeping.

    On failure the policy is dropped from the run state: its weights may be half-updated, and the next
    ``policy_at`` rebuilds it from the last checkpoint and the committed steps after it.
    """
    cfg = run.config
    if policy.state.step != step:
        raise RuntimeError(f"policy is at step {policy.state.step}, cannot apply the update of step {step}")
    for group in policy.optimizer.param_groups:
        group["lr"] = cfg.optimizer.lr_at(step)
    try:
        metrics = update(run, policy, step)
    except BaseException:
        run.policy = None
        raise
    state = policy.state
    state.step = step + 1
    state.data_cursor += cfg.prompts_per_step
    if is_due(state.step, cfg.sync_every):
        state.generator_version = state.step
    if is_due(state.step, cfg.ref_sync_every):
        state.ref_version = state.step
    metrics["train/lr"] = cfg.optimizer.lr_at(step)
    return metrics
