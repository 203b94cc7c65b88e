"""Token-level quantities from causal-LM logits: next-token logprobs, entropy, sequence logprob sums.

Convention: logits [N, T, V] predict token t+1 at position t, so token logprobs and masks are [N, T-1].
"""

from __future__ import annotations

import torch


def masked_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for t < T-1: [N, T-1], in float32.

    Gathers the target logit and subtracts logsumexp, instead of materialising a full log_softmax [N, T-1, V].
    Callers apply their completion mask afterwards.
    """
    logits = logits[:, :-1].float()  # [N, T-1, V]
    targets = input_ids[:, 1:].unsqueeze(-1)  # [N, T-1, 1]
    picked = logits.gather(-1, targets).squeeze(-1)  # [N, T-1]
    return picked - torch.logsumexp(logits, dim=-1)  # [N, T-1]


@torch.no_grad()
def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean token entropy H = -sum_v p log p over valid positions; logits [N, L, V] aligned with mask [N, L].

    For next-token positions pass ``logits[:, :-1]`` with a [N, T-1] mask. Returns 0.0 when nothing is valid.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, L, V]
    entropy = -(logp.exp() * logp).sum(-1)  # [N, L]
    valid = mask > 0  # [N, L]
    n = int(valid.sum())
    return float(entropy[valid].sum()) / n if n else 0.0


def sequence_logprob_sum(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of token logprobs over valid positions: [N, L] -> [N] (paper A's DPO uses summed logprobs)."""
    return token_logprobs.masked_fill(~(mask > 0), 0.0).sum(-1)  # [N]
