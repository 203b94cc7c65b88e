"""Training diagnostics over state dicts and optimizers (pure torch, no I/O).

Paper C ("Do We Need Adam?", arXiv 2602.07729): update sparsity counted in bf16 as in arXiv 2505.11711,
optimizer memory, and the cosine between Adam's first moment and the gradient (~1 in SFT, ~0 in RL).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparsityResult:
    unchanged_fraction: float  # 1 - ||theta_T - theta_0||_0 / n, in bf16
    changed: int  # elements counted as changed
    total: int  # elements compared (tied tensors once)


def _aliases(state: dict[str, torch.Tensor]) -> set[str]:
    """Names whose tensor is a view of exactly the same memory as an earlier name (tied weights)."""
    seen: set[tuple] = set()
    dup: set[str] = set()
    for name, t in state.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if key in seen:
            dup.add(name)
        seen.add(key)
    return dup


SPARSITY_MODES = ("bf16_isclose", "fp32_abs")


def unchanged_mask(before: torch.Tensor, after: torch.Tensor, atol: float, mode: str) -> torch.Tensor:
    """Which elements count as unchanged. Both tensors are first cast to bf16, then:

    - ``bf16_isclose`` (default; sparsity_in_rl's original script, arXiv 2505.11711): ``torch.isclose`` on the
      bf16 tensors with rtol 0, so the difference is taken in bf16 and the threshold is bf16(atol)
      (bf16(1e-5) = 1.00136e-05);
    - ``fp32_abs``: the exact float32 difference of the bf16 values, ``> atol`` means changed.
    """
    a, b = after.detach().to(torch.bfloat16), before.detach().to(after.device, torch.bfloat16)
    if mode == "bf16_isclose":
        return torch.isclose(a, b, rtol=0.0, atol=atol)
    if mode == "fp32_abs":
        return (a.float() - b.float()).abs() <= atol
    raise ValueError(f"sparsity mode must be one of {SPARSITY_MODES}, got {mode!r}")


def update_sparsity(
    before: dict[str, torch.Tensor],
    after: dict[str, torch.Tensor],
    atol: float = 1e-5,
    tied: list[tuple[str, str]] | None = None,
    mode: str = "bf16_isclose",
) -> SparsityResult:
    """Fraction of parameters unchanged between two checkpoints, both cast to bf16 (arXiv 2505.11711).

    An element is unchanged as :func:`unchanged_mask` says for ``mode``. Tied tensors are counted once: names sharing storage within either dict are detected,
    and ``tied`` pairs (first, second) drop ``second`` — needed for state dicts loaded from disk, which lose
    sharing or omit the tied copy. Non-floating-point entries (integer buffers) are ignored.
    """
    drop = _aliases(before) | _aliases(after) | {second for _first, second in (tied or [])}
    names_b = {n for n, t in before.items() if n not in drop and t.is_floating_point()}
    names_a = {n for n, t in after.items() if n not in drop and t.is_floating_point()}
    if names_b != names_a:
        raise ValueError(
            f"state dicts differ: only before {sorted(names_b - names_a)}, only after {sorted(names_a - names_b)}"
        )
    changed = total = 0
    for name in sorted(names_b):
        b, a = before[name], after[name]
        if b.shape != a.shape:
            raise ValueError(f"{name}: shape {tuple(b.shape)} != {tuple(a.shape)}")
        same = unchanged_mask(b, a, atol, mode)  # same shape
        changed += int((~same).sum())
        total += same.numel()
    return SparsityResult(
        unchanged_fraction=1.0 - changed / total if total else 1.0, changed=changed, total=total
    )


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state tensors (0 for momentum-free SGD)."""
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def adam_moment_grad_cosine(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]
) -> float | None:
    """cos(exp_avg, grad) over all ``params`` flattened together; None when there is no Adam moment yet
    (SGD, or before the first step), no gradient, or a zero vector.

    Call after backward() and before optimizer.step(): it then compares the momentum accumulated so far
    with the fresh gradient (paper C: ~0.997 in SFT, ~0 in RL).
    """
    dot = sq_m = sq_g = 0.0
    found = False
    for p in params:
        m = optimizer.state.get(p, {}).get("exp_avg")
        if m is None or p.grad is None:
            continue
        found = True
        m64, g64 = m.detach().double(), p.grad.detach().to(m.device).double()
        dot += float((m64 * g64).sum())
        sq_m += float((m64 * m64).sum())
        sq_g += float((g64 * g64).sum())
    if not found or sq_m == 0.0 or sq_g == 0.0:
        return None
    return dot / math.sqrt(sq_m * sq_g)


def grad_global_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """sqrt(sum of squared gradient entries) over params that have a gradient (0.0 if none)."""
    return math.sqrt(sum(float(p.grad.detach().double().pow(2).sum()) for p in params if p.grad is not None))


def peak_memory_bytes() -> int:
    """Peak GPU memory allocated when on CUDA, else this process's peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB
