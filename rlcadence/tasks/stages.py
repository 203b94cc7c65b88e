"""The RL loop's stages as plain functions (Prefect wraps them in ``tasks/prefect_tasks.py``).

Each stage reads its inputs from the store and writes its outputs there, returning URIs or small metric
dicts: any stage can run in a fresh process, which is what resume after a crash needs.
"""

from __future__ import annotations

import hashlib
import io
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from rlcadence import faults
from rlcadence.config import RLConfig, is_due
from rlcadence.storage import tables
from rlcadence.tasks import runtime
from rlcadence.tasks.checkpoint import (
    TrainerState,
    checkpoint_steps,
    prune_checkpoints,
    save_checkpoint,
)
from rlcadence.tasks.diagnostics import optimizer_state_bytes, peak_memory_bytes, update_sparsity
from rlcadence.tasks.engine.hf import engine_from_model
from rlcadence.tasks.evaluate import heldout_accuracy
from rlcadence.tasks.objectives import (
    PairSelection,
    gradient_filter_mask,
    group_advantages,
    select_pairs_scored,
    select_pairs_verifiable,
    zero_advantage_group_fraction,
)
from rlcadence.tasks.rollouts import PromptRow, completions_table, with_scores
from rlcadence.tasks.task_mix import split_prompts
from rlcadence.tasks.train import dpo_update, pack, policy_update, sft_update
from rlcadence.tasks.verifiers.base import VerifierResult


@dataclass(frozen=True)
class RunStart:
    run_id: str
    start_step: int  # first step still to run (== steps when the run is complete)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from (run seed, step, purpose): identical across processes and resumes."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def new_run_id(cfg: RLConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.algorithm}-{stamp}-{random.Random().getrandbits(24):06x}"


def metrics_columns(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as SQL-friendly columns ("eval/accuracy" -> "eval_accuracy")."""
    return {k.replace("/", "_"): float(v) for k, v in metrics.items()}


def init_run(cfg: RLConfig, run_id: str, model_dir: Path) -> RunStart:
    """Create checkpoint 0 from the seed model (once), and find where the run continues.

    A step is done when its metrics row is committed (the last write of a step), so resume starts at the
    step after the last committed one; checkpoint ``start_step`` exists by construction.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loc = cfg.store_location()
    loc.sweep_temp_files("rollouts", f"run_id={run_id}")
    loc.sweep_temp_files("metrics", f"run_id={run_id}")
    if 0 not in checkpoint_steps(loc, run_id):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=runtime.dtype_of(cfg))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        state = TrainerState(step=0, data_cursor=0, generator_version=0, ref_version=0)
        save_checkpoint(loc, run_id, model, tokenizer, state)
    tasks = runtime.live_tasks(runtime.runtime(run_id, cfg), cfg, AutoTokenizer.from_pretrained(model_dir))
    rejected = [r for t in tasks for r in t.rejected]
    if rejected:
        from rlcadence.tasks.datasets import rejected_to_arrow

        table = rejected_to_arrow(rejected, run_id)
        loc.write_bytes(tables.table_to_parquet_bytes(table), "rejected", f"run_id={run_id}", "part-0.parquet")
    done = tables.committed_steps(loc, "metrics", run_id)
    start = max(done) + 1 if done else 0
    if start not in checkpoint_steps(loc, run_id):
        raise RuntimeError(f"run {run_id}: step {start} has no checkpoint in {loc.uri}; cannot resume")
    return RunStart(run_id, start)


def step_prompts(rt, cfg: RLConfig, tokenizer, step: int) -> list[PromptRow]:
    """The step's prompts: each task's share, from its own stream at cursor step x share (resumable)."""
    tasks = runtime.live_tasks(rt, cfg, tokenizer)
    counts = split_prompts(cfg.prompts_per_step, [t.spec.weight for t in tasks])
    return [p for t, n in zip(tasks, counts, strict=True) for p in t.prompts(step * n, n)]


def generate(cfg: RLConfig, run_id: str, step: int) -> str:
    """Sample G completions for each of the step's M prompts with the generator's current weights."""
    rt = runtime.runtime(run_id, cfg)
    policy = runtime.policy_at(rt, cfg, step)
    version = policy.state.generator_version
    engine = runtime.generator_at(rt, version)
    prompts = step_prompts(rt, cfg, policy.tokenizer, step)
    sampling = cfg.sampling.model_copy(update={"seed": derive_seed(cfg.seed, step, "generate")})
    t0 = time.perf_counter()
    chunk = cfg.generation_batch_prompts or len(prompts)
    groups = []
    for i in range(0, len(prompts), chunk):  # one call = pre-sampling; several = per-micro-batch sampling
        call = sampling.model_copy(update={"seed": derive_seed(cfg.seed, step, "generate", i)})
        groups += engine.generate([p.prompt for p in prompts[i : i + chunk]], cfg.group_size, call)
    faults.maybe_crash("generate", step)
    table = completions_table(run_id, step, version, prompts, groups, time.perf_counter() - t0)
    return rt.loc.write_bytes(tables.table_to_parquet_bytes(table), "staging", run_id, f"step={step}", "generated.parquet")


def score(cfg: RLConfig, run_id: str, step: int, generated: str) -> dict[str, float]:
    """Verify, compute group advantages and the gradient filter, and commit the step's rollout rows."""
    rt = runtime.runtime(run_id, cfg)
    loc = rt.loc
    table = pq.read_table(io.BytesIO(loc.read_bytes(_relative(loc, generated))))
    t0 = time.perf_counter()
    task_col = table.column("task").to_pylist()
    results = score_by_task(runtime.live_tasks(rt, cfg), task_col, table.column("prompt").to_pylist(),
                            table.column("completion").to_pylist(), table.column("gold").to_pylist())
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float64)  # [M*G]
    advantages = group_advantages(rewards, cfg.group_size, cfg.advantage)  # [M*G]
    kept = gradient_filter_mask(advantages, cfg.filter.tau)  # [M*G]
    table = with_scores(table, results, advantages, kept, time.perf_counter() - t0)
    tables.write_step_table(loc, "rollouts", run_id, step, table)
    lengths = torch.tensor(table.column("completion_tokens").to_pylist(), dtype=torch.float64)
    per_task = per_task_reward_metrics(runtime.live_tasks(rt, cfg), task_col, rewards) if len(cfg.tasks) > 1 else {}
    return per_task | {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float((rewards >= 1.0).double().mean()),
        "rollout/mean_length": float(lengths.mean()),
        "rollout/zero_advantage_group_fraction": zero_advantage_group_fraction(rewards, cfg.group_size),
        "rollout/kept_fraction": float(kept.double().mean()),
        "rollout/generator_lag": float(step - table.column("policy_version")[0].as_py()),
        "time/generate_s": float(sum(table.column("generate_seconds").to_pylist())),
        "time/score_s": time.perf_counter() - t0,
    }


def score_by_task(tasks, task_col, prompts, completions, golds) -> list[VerifierResult]:
    """Each row scored by its own task's verifier or scorer, in one call per task."""
    results: list[VerifierResult | None] = [None] * len(task_col)
    for task in tasks:
        idx = [i for i, name in enumerate(task_col) if name == task.spec.name]
        if idx:
            scored = task.score([prompts[i] for i in idx], [completions[i] for i in idx], [golds[i] for i in idx])
            for i, r in zip(idx, scored, strict=True):
                results[i] = r
    missing = [task_col[i] for i, r in enumerate(results) if r is None]
    if missing:
        raise ValueError(f"rollouts of unknown task(s) {sorted(set(missing))}")
    return results  # type: ignore[return-value]


def per_task_reward_metrics(tasks, task_col, rewards: torch.Tensor) -> dict[str, float]:
    out = {}
    for task in tasks:
        mask = torch.tensor([name == task.spec.name for name in task_col])
        if bool(mask.any()):
            out[f"reward/mean_{task.spec.name}"] = float(rewards[mask].mean())
            if task.spec.verifiable:
                out[f"reward/accuracy_{task.spec.name}"] = float((rewards[mask] >= 1.0).double().mean())
    return out


def _relative(loc, uri: str) -> str:
    path = uri.removeprefix("s3://")
    return path[len(loc.root) + 1 :] if path.startswith(loc.root) else path


def train(cfg: RLConfig, run_id: str, step: int) -> dict[str, float]:
    """One optimizer update on the step's rollouts; then sync decisions and checkpoint ``step + 1``."""
    rt = runtime.runtime(run_id, cfg)
    policy = runtime.policy_at(rt, cfg, step)
    t0 = time.perf_counter()
    for group in policy.optimizer.param_groups:
        group["lr"] = cfg.optimizer.lr_at(step)
    try:
        metrics = _update(rt, policy, cfg, step)
    except BaseException:
        rt.policy = None  # weights may be half-updated: a retry reloads checkpoint `step`
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
    save_checkpoint(rt.loc, run_id, policy.model, policy.tokenizer, state)
    metrics["time/checkpoint_s"] = time.perf_counter() - t1
    metrics |= update_diagnostics(rt, policy, last_sync=step_generator_version)
    metrics["sync/generator_version"] = float(state.generator_version)
    metrics["sync/ref_version"] = float(state.ref_version)
    return metrics


def update_diagnostics(rt, policy, last_sync: int) -> dict[str, float]:
    """Paper C's diagnostics: bf16 update sparsity vs the initial weights and vs the generator's version
    (the last sync), optimizer state bytes and peak memory."""
    now = {k: v.detach() for k, v in policy.model.state_dict().items()}
    tied = [("model.embed_tokens.weight", "lm_head.weight")] if "lm_head.weight" in now and policy.model.config.tie_word_embeddings else []
    vs_init = update_sparsity(runtime.bf16_snapshot(rt, 0), now, tied=tied)
    vs_sync = update_sparsity(runtime.bf16_snapshot(rt, last_sync), now, tied=tied)
    return {
        "sparsity/unchanged_vs_initial": vs_init.unchanged_fraction,
        "sparsity/changed_vs_initial": float(vs_init.changed),
        "sparsity/unchanged_vs_last_sync": vs_sync.unchanged_fraction,
        "sparsity/parameters": float(vs_init.total),
        "memory/optimizer_state_bytes": float(optimizer_state_bytes(policy.optimizer)),
        "memory/peak_rss_bytes": float(peak_memory_bytes()),
    }


def dpo_pairs(tasks, rows: list[dict], group_size: int, seed: int) -> PairSelection:
    """Pairs within each task: verifiable -> random correct vs random incorrect; scored -> best vs worst."""
    rng = random.Random(seed)
    chosen, rejected, skipped = [], [], 0
    for task in tasks:
        idx = [i for i, r in enumerate(rows) if r["task"] == task.spec.name]
        if not idx:
            continue
        rewards = torch.tensor([rows[i]["reward"] for i in idx])
        sel = (select_pairs_verifiable(rewards, group_size, rng) if task.spec.verifiable
               else select_pairs_scored(rewards, group_size))
        chosen += [idx[i] for i in sel.chosen]
        rejected += [idx[i] for i in sel.rejected]
        skipped += sel.skipped_groups
    return PairSelection(chosen, rejected, skipped)


def _needs_reference(cfg: RLConfig) -> bool:
    return cfg.algorithm == "dpo" or cfg.policy_loss.kl_beta > 0


def _update(rt, policy, cfg: RLConfig, step: int) -> dict[str, float]:
    rows = tables.read_step_table(rt.loc, "rollouts", rt.run_id, step).to_pylist()
    tok = policy.tokenizer
    prompt_ids = [[tok.bos_token_id] + tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    completion_ids = [r["token_ids"] for r in rows]
    ref = runtime.reference_at(rt, policy.state.ref_version) if _needs_reference(cfg) else None
    if cfg.algorithm == "sft":
        gold_ids = [tok(r["gold"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows[:: cfg.group_size]]
        batch = pack(prompt_ids[:: cfg.group_size], gold_ids, tok.pad_token_id)
        return sft_update(policy.model, policy.optimizer, batch, cfg.optimizer, cfg.micro_batch_size)
    if cfg.algorithm == "dpo":
        pairs = dpo_pairs(runtime.live_tasks(rt, cfg), rows, cfg.group_size, derive_seed(cfg.seed, step, "pairs"))
        pick = lambda idx: pack([prompt_ids[i] for i in idx], [completion_ids[i] for i in idx], tok.pad_token_id)  # noqa: E731
        out = dpo_update(policy.model, policy.optimizer, pick(pairs.chosen), pick(pairs.rejected), ref, cfg)
        out["dpo/skipped_groups"] = float(pairs.skipped_groups)
        return out
    batch = pack(prompt_ids, completion_ids, tok.pad_token_id, [r["token_logprobs"] for r in rows])
    advantages = torch.tensor([r["advantage"] for r in rows], dtype=torch.float32)
    kept = torch.tensor([r["kept"] for r in rows], dtype=torch.bool)
    return policy_update(policy.model, policy.optimizer, batch, advantages, kept, cfg, ref,
                         max_completion_len=cfg.sampling.max_new_tokens)


def evaluate(cfg: RLConfig, run_id: str, policy_step: int) -> dict[str, float]:
    """Greedy held-out accuracy of the trainer's weights after ``policy_step`` updates."""
    rt = runtime.runtime(run_id, cfg)
    policy = runtime.policy_at(rt, cfg, policy_step)
    engine = engine_from_model(policy.model.eval(), policy.tokenizer, policy_step)
    out: dict[str, float] = {}
    for i, task in enumerate(runtime.live_tasks(rt, cfg, policy.tokenizer)):
        heldout = task.heldout(cfg.eval_size)
        if not heldout:
            continue
        scorer = _as_verifier(task, [p.prompt for p in heldout])
        m = heldout_accuracy(engine, [p.prompt for p in heldout], [p.gold for p in heldout], scorer, cfg.eval_sampling)
        if i == 0:
            out |= m  # the first task's figures are the run's headline eval/accuracy
        if len(cfg.tasks) > 1:
            out[f"eval/accuracy_{task.spec.name}"] = m["eval/accuracy"]
    return out


def _as_verifier(task, prompts: list[str]):
    """Held-out scoring through the task (its verifier or scorer) with the Verifier signature."""
    return lambda completions, golds: task.score(prompts[: len(completions)], completions, golds)


def record_step(cfg: RLConfig, run_id: str, step: int, metrics: dict[str, float]) -> str:
    """Commit the step (its metrics row is the commit point), then drop staging and old checkpoints."""
    loc = cfg.store_location()
    tasks = ",".join(t.name for t in cfg.tasks)
    uri = tables.write_metrics(loc, run_id, step, {"tasks": tasks, **metrics_columns(metrics)})
    loc.delete_dir("staging", run_id, f"step={step}")
    rt = runtime.runtime(run_id, cfg)
    if rt.policy is not None:
        s = rt.policy.state
        prune_checkpoints(loc, run_id, cfg.keep_checkpoints, {0, s.generator_version, s.ref_version})
    return uri


def export_final_model(cfg: RLConfig, run_id: str, step: int) -> str:
    """Publish the final policy (HF format) under ``models/<run_id>`` for downstream use."""
    rt = runtime.runtime(run_id, cfg)
    policy = runtime.policy_at(rt, cfg, step)
    with tempfile.TemporaryDirectory(prefix="rlc-final-") as tmp:
        policy.model.save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
        return rt.loc.put_dir(Path(tmp), "models", run_id)
