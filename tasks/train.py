"""Stage 3, train: one optimizer update on the step's committed rollouts, the sync decisions for the
generator and the reference, and checkpoint ``step + 1``."""

from __future__ import annotations

import random
import time

import torch

from rlcadence.config import RLConfig, is_due
from rlcadence.environments.mix import Environment
from rlcadence.objectives import PairSelection, select_pairs_scored, select_pairs_verifiable
from rlcadence.run_state import Policy, RunState
from rlcadence.seeding import derive_seed
from rlcadence.storage import tables
from rlcadence.tasks.stage import stage
from rlcadence.trainer.diagnostics import optimizer_state_bytes, peak_memory_bytes, update_sparsity
from rlcadence.trainer.update import dpo_update, pack, policy_update, sft_update


@stage("train")
def train(run: RunState, step: int) -> dict[str, float]:
    """One optimizer update on the step's rollouts; then sync decisions and checkpoint ``step + 1``."""
    cfg = run.config
    policy = run.policy_at(step)
    t0 = time.perf_counter()
    for group in policy.optimizer.param_groups:
        group["lr"] = cfg.optimizer.lr_at(step)
    try:
        metrics = update(run, policy, step)
    except BaseException:
        run.policy = None  # weights may be half-updated: a retry reloads checkpoint `step`
        raise
    state = policy.state
    step_generator_version = state.generator_version
    state.step = step + 1
    state.data_cursor += cfg.prompts_per_step
    if is_due(state.step, cfg.sync_every):
        state.generator_version = state.step
    if is_due(state.step, cfg.ref_sync_every):
        state.ref_version = state.step
    state.optimizer = policy.optimizer.state_dict()
    metrics["time/train_s"] = time.perf_counter() - t0
    metrics["train/lr"] = cfg.optimizer.lr_at(step)
    t1 = time.perf_counter()
    run.save_checkpoint(policy.model, policy.tokenizer, state)
    metrics["time/checkpoint_s"] = time.perf_counter() - t1
    metrics |= update_diagnostics(run, policy, last_sync=step_generator_version)
    metrics["sync/generator_version"] = float(state.generator_version)
    metrics["sync/ref_version"] = float(state.ref_version)
    return metrics


def _module_bytes(model: torch.nn.Module | None) -> int:
    return 0 if model is None else sum(t.numel() * t.element_size() for t in model.state_dict().values())


def update_diagnostics(run: RunState, policy: Policy, last_sync: int) -> dict[str, float]:
    """Paper C's diagnostics: bf16 update sparsity vs the initial weights and vs the generator's version
    (the last sync), optimizer state bytes, the reference model's bytes (0 when none is loaded), peak memory."""
    now = {k: v.detach() for k, v in policy.model.state_dict().items()}
    tied = [("model.embed_tokens.weight", "lm_head.weight")] if "lm_head.weight" in now and policy.model.config.tie_word_embeddings else []
    vs_init = update_sparsity(run.bf16_snapshot(0), now, tied=tied, mode=run.config.sparsity)
    vs_sync = update_sparsity(run.bf16_snapshot(last_sync), now, tied=tied, mode=run.config.sparsity)
    return {
        "sparsity/unchanged_vs_initial": vs_init.unchanged_fraction,
        "sparsity/changed_vs_initial": float(vs_init.changed),
        "sparsity/unchanged_vs_last_sync": vs_sync.unchanged_fraction,
        "sparsity/parameters": float(vs_init.total),
        "memory/optimizer_state_bytes": float(optimizer_state_bytes(policy.optimizer)),
        "memory/reference_model_bytes": float(_module_bytes(run.ref_model)),
        "memory/peak_rss_bytes": float(peak_memory_bytes()),
    }


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
    prompt_ids = [[tok.bos_token_id] + tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    completion_ids = [r["token_ids"] for r in rows]
    ref = run.reference_at(policy.state.ref_version) if needs_reference(cfg) else None
    if cfg.algorithm == "sft":
        gold_ids = [tok(r["gold"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows[:: cfg.group_size]]
        batch = pack(prompt_ids[:: cfg.group_size], gold_ids, tok.pad_token_id)
        return sft_update(policy.model, policy.optimizer, batch, cfg.optimizer, cfg.micro_batch_size)
    if cfg.algorithm == "dpo":
        pairs = dpo_pairs(run.environments(), rows, cfg.group_size, derive_seed(cfg.seed, step, "pairs"))
        pick = lambda idx: pack([prompt_ids[i] for i in idx], [completion_ids[i] for i in idx], tok.pad_token_id)  # noqa: E731
        out = dpo_update(policy.model, policy.optimizer, pick(pairs.chosen), pick(pairs.rejected), ref, cfg)
        out["dpo/skipped_groups"] = float(pairs.skipped_groups)
        return out
    batch = pack(prompt_ids, completion_ids, tok.pad_token_id, [r["token_logprobs"] for r in rows])
    advantages = torch.tensor([r["advantage"] for r in rows], dtype=torch.float32)
    kept = torch.tensor([r["kept"] for r in rows], dtype=torch.bool)
    return policy_update(policy.model, policy.optimizer, batch, advantages, kept, cfg, ref,
                         max_completion_len=cfg.sampling.max_new_tokens)
