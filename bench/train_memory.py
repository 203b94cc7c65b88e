"""Peak memory of one GRPO train step with a real vocabulary: the chunked LM head vs full logits.

    .venv/bin/python bench/train_memory.py [--rows 256] [--prompt 128] [--completion 128]
        [--budgets 4096 16384] [--chunk 1024] [--small-rows 8]

A random-init Qwen2-architecture model (vocab 151,936 as in Qwen2.5, hidden 64, 2 layers, tied
embeddings) takes one ``policy_update`` (GRPO, AdamW) over ``rows`` x (prompt + completion) tokens, once
per ``max_tokens_per_micro_batch`` in ``budgets``. Then, on ``small-rows`` rows, the old path (full
[N, T, V] float32 logits, as the trainer computed them before) and the new path side by side, since the
old path cannot run at full size: its logits alone would need N x T x V x 4 bytes, printed below.

Each variant runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own. Peak RSS includes
the interpreter, torch and transformers (printed as the baseline, measured after the model is built).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

VOCAB = 151_936
GiB = 1024**3


def _model():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True))


def _batch(rows: int, prompt: int, completion: int):
    """Random prompt and completion tokens; generator logprobs near a uniform model's (-log V)."""
    import torch

    from rlcadence.trainer.update import pack

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (rows, prompt + completion), generator=g).tolist()
    old = (-torch.log(torch.tensor(float(VOCAB))) + 0.1 * torch.randn(rows, completion, generator=g)).tolist()
    batch = pack([r[:prompt] for r in ids], [r[prompt:] for r in ids], pad_id=0, completion_logprobs=old)
    advantages = torch.randn(rows, generator=g)
    return batch, advantages


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_variant(path: str, rows: int, prompt: int, completion: int, budget: int | None, chunk: int) -> dict:
    """One GRPO step in this process; returns its figures."""
    import torch

    from rlcadence.config import RLConfig
    from rlcadence.objectives import masked_entropy, masked_token_logprobs, policy_loss
    from rlcadence.trainer.update import build_optimizer, optimizer_step, policy_update

    torch.manual_seed(0)
    model = _model()
    batch, adv = _batch(rows, prompt, completion)
    cfg = RLConfig(prompts_per_step=rows // 8, group_size=8, max_tokens_per_micro_batch=budget,
                   logits_chunk_tokens=chunk, optimizer={"name": "adamw", "lr": 1e-4})
    optimizer = build_optimizer(model, cfg.optimizer)
    kept = torch.ones(rows, dtype=torch.bool)
    baseline = _rss_bytes()
    t0 = time.perf_counter()
    if path == "new":
        out = policy_update(model, optimizer, batch, adv, kept, cfg, max_completion_len=completion)
        entropy = out["train/entropy"]
    else:  # the trainer before chunking: full float32 logits of the whole batch, one micro-batch
        model.train()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()  # [N, T, V]
        logp = masked_token_logprobs(logits, batch.input_ids)  # [N, T-1]
        loss = policy_loss(logp, batch.old_logprobs, adv, batch.completion_mask, float(rows), cfg.policy_loss).loss
        loss.backward()
        entropy = masked_entropy(logits.detach()[:, :-1], batch.completion_mask)
        optimizer_step(model, optimizer, cfg.optimizer)
    wall = time.perf_counter() - t0
    tokens = rows * (prompt + completion)
    return {"path": path, "rows": rows, "budget": budget, "chunk": chunk, "peak_rss": _rss_bytes(),
            "baseline_rss": baseline, "wall_s": wall, "tokens_per_s": tokens / wall, "entropy": entropy}


def _spawn(**kw) -> dict:
    args = [sys.executable, __file__, "--variant", json.dumps(kw)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {**kw, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['path']} | {r['rows']} | {r.get('budget')} | {r['chunk']} | failed: {r['error']} | | | |"
    return (f"| {r['path']} | {r['rows']} | {r['budget'] or 'none'} | {r['chunk']} | {r['peak_rss'] / GiB:.2f} GiB "
            f"| {r['baseline_rss'] / GiB:.2f} GiB | {r['wall_s']:.1f} s | {r['tokens_per_s']:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--completion", type=int, default=128)
    ap.add_argument("--budgets", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--chunk", type=int, default=1024, help="logits_chunk_tokens")
    ap.add_argument("--small-rows", type=int, default=8, help="rows for the old-vs-new comparison (0: skip)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(**json.loads(args.variant))))
        return

    t = args.prompt + args.completion
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"Qwen2 architecture, V={VOCAB:,}, hidden 64, 2 layers; {t} tokens per row "
          f"({args.prompt} prompt + {args.completion} completion); one GRPO step with AdamW")
    print(f"old path, logits alone for {args.rows} x {t}: {args.rows} x {t} x {VOCAB:,} x 4 B = "
          f"{args.rows * t * VOCAB * 4 / 1e9:.1f} GB ({args.rows * t * VOCAB * 4 / GiB:.1f} GiB)")
    common = {"prompt": args.prompt, "completion": args.completion, "chunk": args.chunk}
    variants = [{"path": "new", "rows": args.rows, "budget": b} for b in args.budgets]
    if args.small_rows:
        n = args.small_rows
        print(f"old path, logits alone for {n} x {t}: {n * t * VOCAB * 4 / GiB:.2f} GiB")
        variants += [{"path": p, "rows": n, "budget": None} for p in ("old", "new")]
    print("| path | rows | max_tokens_per_micro_batch | logits_chunk_tokens | peak RSS | RSS before the step "
          "| step wall | tokens/s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    results = []
    for v in variants:  # one fresh process each, printed as it finishes
        results.append(_spawn(**v, **common))
        print(_row(results[-1]), flush=True)
    small = [r for r in results if r["rows"] == args.small_rows and "error" not in r]
    if len(small) == 2:
        print(f"entropy, old vs new path on {args.small_rows} rows: {small[0]['entropy']:.6f} vs {small[1]['entropy']:.6f}")


if __name__ == "__main__":
    main()
