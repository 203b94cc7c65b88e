"""Stage 3, train: one optimizer update on the step's committed rollouts, the sync decisions for the
generator and the reference, and a full checkpoint every ``checkpoint_every`` steps (written in the
background; resume replays the steps after it from the stored rollouts)."""

from __future__ import annotations

import time

import torch

from rlcadence.run_state import Policy, RunState
from rlcadence.tasks.stage import stage
from rlcadence.trainer.diagnostics import optimizer_state_bytes, peak_memory_bytes, update_sparsity
from rlcadence.trainer.step import advance


@stage("train")
def train(run: RunState, step: int) -> dict[str, float]:
    """One optimizer update on the step's rollouts; then sync decisions and, when due, a checkpoint."""
    policy = run.policy_at(step)
    last_sync = policy.state.generator_version
    run.bf16_weights(last_sync)  # before the update: version `step` may exist only as today's live weights
    t0 = time.perf_counter()
    metrics = advance(run, policy, step)
    metrics["time/train_s"] = time.perf_counter() - t0
    metrics |= run.checkpoint_if_due(policy)
    metrics |= update_diagnostics(run, policy, last_sync=last_sync)
    metrics |= run.pop_sync_metrics()  # the sync before this step's generation (seconds, bytes), if any
    metrics["sync/generator_version"] = float(policy.state.generator_version)
    metrics["sync/ref_version"] = float(policy.state.ref_version)
    return metrics


def _module_bytes(model: torch.nn.Module | None) -> int:
    return 0 if model is None else sum(t.numel() * t.element_size() for t in model.state_dict().values())


def update_diagnostics(run: RunState, policy: Policy, last_sync: int) -> dict[str, float]:
    """Paper C's diagnostics: bf16 update sparsity vs the initial weights and vs the generator's version
    (the last sync), optimizer state bytes, the reference model's bytes (0 when none is loaded), peak memory."""
    now = {k: v.detach() for k, v in policy.model.state_dict().items()}
    tied = [("model.embed_tokens.weight", "lm_head.weight")] if "lm_head.weight" in now and policy.model.config.tie_word_embeddings else []
    vs_init = update_sparsity(run.bf16_weights(0), now, tied=tied, mode=run.config.sparsity)
    vs_sync = update_sparsity(run.bf16_weights(last_sync), now, tied=tied, mode=run.config.sparsity)
    return {
        "sparsity/unchanged_vs_initial": vs_init.unchanged_fraction,
        "sparsity/changed_vs_initial": float(vs_init.changed),
        "sparsity/unchanged_vs_last_sync": vs_sync.unchanged_fraction,
        "sparsity/parameters": float(vs_init.total),
        "memory/optimizer_state_bytes": float(optimizer_state_bytes(policy.optimizer)),
        "memory/reference_model_bytes": float(_module_bytes(run.ref_model)),
        "memory/peak_rss_bytes": float(peak_memory_bytes()),
    }
