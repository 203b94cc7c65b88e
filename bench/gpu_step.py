"""One RL step (generate -> score -> train -> checkpoint) on a Qwen2.5-0.5B-architecture model, on a GPU.

The model is random-init from the real architecture's config, written here (nothing can be downloaded),
so the figures are throughput, not quality. Prompts are random token ids; the reward is a deterministic
function of the completion (its share of even token ids), enough to give GRPO non-zero advantages.

Reports: generation tokens/s, trainer tokens/s, model FLOP utilisation (6 * N * tokens / (time * peak bf16
FLOP/s); N = all parameters, embeddings included), peak device memory, and the checkpoint's host copy and
write times. ``--small`` is a 2-layer, 64-wide model with the same 151,936-token vocabulary, for the CPU.

    python bench/gpu_step.py                    # on the lent GPU machine (scripts/gpu-check.sh runs it)
    .venv/bin/python bench/gpu_step.py --small  # here, on the CPU

Imports only rlcadence's components (torch, transformers, pydantic), never Prefect, DuckDB or boto3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlcadence.config import RLConfig
from rlcadence.devices import configure_matmul, resolve_device
from rlcadence.engines.base import SamplingParams
from rlcadence.engines.hf import TransformersEngine
from rlcadence.models.random_init import TinySize, architecture_config, build_tokenizer, qwen25_05b_config
from rlcadence.objectives.advantages import group_advantages
from rlcadence.objectives.config import AdvantageConfig
from rlcadence.trainer.checkpoint import TrainerState, snapshot, write_snapshot
from rlcadence.trainer.update import build_optimizer, pack, policy_update

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def model_config(small: bool, tokenizer):
    """Qwen2.5-0.5B's architecture, or a 2-layer 64-wide Qwen2 with the same 151,936-token vocabulary."""
    if small:
        return architecture_config("qwen2", tokenizer, TinySize(hidden_size=64, num_layers=2, num_heads=4,
                                                               num_kv_heads=2, intermediate_size=128))
    return qwen25_05b_config()


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="2 layers x 64 wide (CPU-sized), same vocabulary")
    ap.add_argument("--prompts", type=int, default=None, help="M (default 32; 4 with --small)")
    ap.add_argument("--group", type=int, default=8, help="G: samples per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 128; 32 with --small")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128; 16 with --small")
    ap.add_argument("--micro-tokens", type=int, default=None, help="max_tokens_per_micro_batch (default 65536; 4096 small)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="directory for gpu_step.json")
    args = ap.parse_args(argv)
    small = args.small
    m = args.prompts or (4 if small else 32)
    p_len = args.prompt_tokens or (32 if small else 128)
    new = args.new_tokens or (16 if small else 128)
    micro = args.micro_tokens or (4096 if small else 65536)
    device = resolve_device(args.device)
    configure_matmul(device)
    torch.manual_seed(0)
    print(f"command: python bench/gpu_step.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")

    cfg = RLConfig(prompts_per_step=m, group_size=args.group, device=args.device, max_tokens_per_micro_batch=micro,
                   sampling=SamplingParams(max_new_tokens=new, temperature=1.0, seed=0))
    tokenizer = build_tokenizer("qwen2")  # the real vocabulary size; prompts are random ids below
    model = AutoModelForCausalLM.from_config(model_config(small, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="rlc-gpu-step-") as tmp:
        model_dir = Path(tmp) / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        model = model.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        # 1. generate: M prompts x G samples, bf16 engine on CUDA (fp32 on CPU)
        gen_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        engine = TransformersEngine(model_dir, device=str(device), dtype=gen_dtype)
        g = torch.Generator().manual_seed(0)
        prompt_ids = [torch.randint(10, 151000, (p_len,), generator=g).tolist() for _ in range(m)]
        rows_prompt = [p for p in prompt_ids for _ in range(args.group)]
        sync(device)
        t0 = time.perf_counter()
        groups = engine.generate(prompt_ids, args.group, cfg.sampling)  # random weights: EOS is 1 in 151,936
        sync(device)
        tokens = [c.token_ids for grp in groups for c in grp]
        logps = [c.logprobs for grp in groups for c in grp]
        gen_s = time.perf_counter() - t0
        gen_tokens = sum(len(t) for t in tokens)
        del engine

        # 2. score: share of even token ids, then group-relative advantages
        rewards = torch.tensor([sum(1 for x in t if x % 2 == 0) / max(1, len(t)) for t in tokens])
        advantages = group_advantages(rewards, args.group, AdvantageConfig())
        kept = torch.ones(len(tokens), dtype=torch.bool)

        # 3. train: one GRPO update, token-budget micro-batches, chunked LM head
        optimizer = build_optimizer(model, cfg.optimizer)
        batch = pack(rows_prompt, tokens, tokenizer.pad_token_id, logps)
        train_tokens = int(batch.attention_mask.sum())
        sync(device)
        t1 = time.perf_counter()
        metrics = policy_update(model, optimizer, batch, advantages, kept, cfg, max_completion_len=new)
        sync(device)
        train_s = time.perf_counter() - t1

        # 4. checkpoint: host copy (on the critical path), then serialise (a background thread in a run)
        state = TrainerState(step=1, data_cursor=m, generator_version=1, ref_version=0)
        t2 = time.perf_counter()
        snap = snapshot(model, tokenizer, state, optimizer)
        copy_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        write_snapshot(Path(tmp) / "ckpt", snap, cfg.checkpoint_shard_bytes)
        write_s = time.perf_counter() - t3
        ckpt_bytes = sum(f.stat().st_size for f in (Path(tmp) / "ckpt").rglob("*") if f.is_file())

    peak = peak_flops(device)
    flops = 6 * n_params * train_tokens
    result = {
        "model": "qwen2.5-0.5b-arch" + (" (small)" if small else ""), "parameters": n_params,
        "rows": len(tokens), "generated_tokens": gen_tokens, "generate_s": gen_s,
        "generation_tokens_per_s": gen_tokens / gen_s, "train_tokens": train_tokens, "train_s": train_s,
        "trainer_tokens_per_s": train_tokens / train_s,
        "mfu": flops / (train_s * peak) if peak else None,
        "peak_device_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "checkpoint_copy_s": copy_s, "checkpoint_write_s": write_s, "checkpoint_gb": ckpt_bytes / 1e9,
        "train_grad_norm": metrics.get("train/grad_norm"),
    }
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.out:
        Path(args.out, "gpu_step.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
