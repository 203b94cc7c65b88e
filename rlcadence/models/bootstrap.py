"""Bootstrap the embedded default: build a tiny Llama and SFT it on the arithmetic task.

This is the "seed model" of the papers' experiments: good enough to get reward signal (~50% held-out
exact match), weak enough that RL has room to improve it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlcadence.config import BootstrapConfig, OptimizerConfig
from rlcadence.engines.base import SamplingParams
from rlcadence.engines.hf import engine_from_model
from rlcadence.environments.arithmetic import TrainStream, make_splits, verify_sum
from rlcadence.evaluation import heldout_accuracy
from rlcadence.models.tiny import build_model, build_tokenizer, save_model
from rlcadence.prompts import encode_prompts
from rlcadence.reporting.terminal import TerminalProgress
from rlcadence.trainer.update import build_optimizer, pack, sft_update


def bootstrap_key(cfg: BootstrapConfig) -> str:
    """Content key of a bootstrap model: same config, same model, so runs can share it."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return "bootstrap-" + hashlib.sha256(blob).hexdigest()[:12]


def sft_batches(stream: TrainStream, tokenizer, start: int, size: int):
    problems = stream.batch(start, size)
    prompts = encode_prompts(tokenizer, [p.prompt for p in problems])
    answers = [tokenizer(p.gold, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p in problems]
    return pack(prompts, answers, tokenizer.pad_token_id)


def bootstrap_lr(step: int, end: int, cfg: BootstrapConfig) -> float:
    """Linear warm-up, then the peak lr, then a linear anneal to 0 over the last ``anneal_steps`` before ``end``."""
    warm = (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else 1.0
    anneal = min(cfg.anneal_steps, end)
    cool = (end - step) / anneal if anneal and step >= end - anneal else 1.0
    return cfg.lr * min(warm, cool)


def _greedy_accuracy(model, tokenizer, problems, digits: int) -> float:
    engine = engine_from_model(model.eval(), tokenizer, 0)
    acc = heldout_accuracy(engine, encode_prompts(tokenizer, [p.prompt for p in problems]), [p.gold for p in problems], verify_sum,
                           SamplingParams(temperature=0.0, max_new_tokens=digits + 2))
    model.train()
    return acc["eval/accuracy"]


def train_bootstrap(cfg: BootstrapConfig, out_dir: Path, log=print) -> dict[str, float]:
    """SFT a fresh tiny model; saves it to ``out_dir`` and returns its metrics (held-out accuracy).

    Trains at the peak lr until validation exact match reaches ``target_accuracy`` (checked every
    ``check_every`` steps) or the step budget runs out, then anneals. Training data and the validation
    split exclude the held-out problems, so held-out accuracy measures generalisation.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg.model, tokenizer, cfg.seed)
    opt_cfg = OptimizerConfig(name="adamw", lr=cfg.lr, grad_clip=1.0)
    optimizer = build_optimizer(model, opt_cfg)
    train, heldout = make_splits(cfg.environment.split_seed, cfg.environment.digits, cfg.environment.n_heldout)
    stream = TrainStream(seed=cfg.seed + 7, digits=cfg.environment.digits, exclude=train.exclude)
    validation = TrainStream(seed=cfg.seed + 13, digits=cfg.environment.digits, exclude=train.exclude).batch(0, cfg.n_validation)
    end, val_acc, loss = cfg.steps, float("nan"), 0.0
    checking = cfg.target_accuracy is not None  # until the target is hit (then `end` moves up to step + anneal)
    step = 0
    bar = TerminalProgress(end, 0, "bootstrap SFT")
    while step < end:
        for group in optimizer.param_groups:
            group["lr"] = bootstrap_lr(step, end, cfg)
        batch = sft_batches(stream, tokenizer, step * cfg.batch_size, cfg.batch_size)
        loss = sft_update(model, optimizer, batch, opt_cfg)["train/loss"]
        step += 1
        if checking and step % cfg.check_every == 0 and step < cfg.steps - cfg.anneal_steps:
            val_acc = _greedy_accuracy(model, tokenizer, validation, cfg.environment.digits)
            log(f"bootstrap SFT step {step}/{cfg.steps} loss {loss:.3f} validation accuracy {val_acc:.3f}")
            if val_acc >= cfg.target_accuracy:
                checking, end = False, step + cfg.anneal_steps
                log(f"bootstrap: target {cfg.target_accuracy} reached at step {step}; annealing until step {end}")
        elif step % 100 == 0:
            log(f"bootstrap SFT step {step}/{end} loss {loss:.3f}")
        bar.show(step, f"loss {loss:.3f}" + ("" if val_acc != val_acc else f" · validation {100 * val_acc:.1f}%"), total=end)
    bar.close()
    save_model(model, tokenizer, out_dir)
    acc = _greedy_accuracy(AutoModelForCausalLM.from_pretrained(out_dir), tokenizer, heldout, cfg.environment.digits)
    return {"bootstrap/final_loss": loss, "bootstrap/heldout_accuracy": acc, "bootstrap/steps": float(step),
            "bootstrap/validation_accuracy_at_anneal": val_acc, "bootstrap/seconds": time.perf_counter() - t0}


METRICS_FILE = "bootstrap_metrics.json"


def bootstrap_metrics(model_dir: str | Path) -> dict[str, float]:
    """The metrics saved beside a bootstrap model ({} for a model that is not one)."""
    path = Path(model_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
