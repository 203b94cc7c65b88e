"""Bootstrap the embedded default: build a tiny Llama and SFT it on the arithmetic task.

This is the "seed model" of the papers' experiments: good enough to get reward signal (~50% held-out
exact match), weak enough that RL has room to improve it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from rlcadence.config import BootstrapConfig, OptimizerConfig
from rlcadence.tasks.arithmetic import TrainStream, make_splits, verify_sum
from rlcadence.tasks.engine.base import SamplingParams
from rlcadence.tasks.engine.hf import TransformersEngine
from rlcadence.tasks.evaluate import heldout_accuracy
from rlcadence.tasks.tiny_model import build_model, build_tokenizer, save_model
from rlcadence.tasks.train import build_optimizer, pack, sft_update


def bootstrap_key(cfg: BootstrapConfig) -> str:
    """Content key of a bootstrap model: same config, same model, so runs can share it."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return "bootstrap-" + hashlib.sha256(blob).hexdigest()[:12]


def sft_batches(stream: TrainStream, tokenizer, start: int, size: int):
    problems = stream.batch(start, size)
    bos = [tokenizer.bos_token_id]
    prompts = [bos + tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    answers = [tokenizer(p.gold, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p in problems]
    return pack(prompts, answers, tokenizer.pad_token_id)


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def train_bootstrap(cfg: BootstrapConfig, out_dir: Path, log=print) -> dict[str, float]:
    """SFT a fresh tiny model; saves it to ``out_dir`` and returns its metrics (held-out accuracy)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg.model, tokenizer, cfg.seed)
    opt_cfg = OptimizerConfig(name="adamw", lr=cfg.lr, grad_clip=1.0)
    optimizer = build_optimizer(model, opt_cfg)
    _, heldout = make_splits(cfg.task.split_seed, cfg.task.digits, cfg.task.n_heldout)
    stream = TrainStream(seed=cfg.seed + 7, digits=cfg.task.digits, exclude=frozenset())
    loss = 0.0
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        batch = sft_batches(stream, tokenizer, step * cfg.batch_size, cfg.batch_size)
        loss = sft_update(model, optimizer, batch, opt_cfg)["train/loss"]
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"bootstrap SFT step {step}/{cfg.steps} loss {loss:.3f}")
    save_model(model, tokenizer, out_dir)
    engine = TransformersEngine(out_dir)
    acc = heldout_accuracy(engine, [p.prompt for p in heldout], [p.gold for p in heldout], verify_sum,
                           SamplingParams(temperature=0.0, max_new_tokens=cfg.task.digits + 2))
    return {"bootstrap/final_loss": loss, "bootstrap/heldout_accuracy": acc["eval/accuracy"],
            "bootstrap/seconds": time.perf_counter() - t0}
