"""Log-probs and entropy of target tokens without materialising [N, T, V] logits.

A causal LM is split into its decoder body (hidden states [N, T, H]) and its LM head (H -> V). Only the
positions whose target is a completion token go through the head, ``chunk_tokens`` at a time; each chunk
computes its logits, a selective log-softmax (target logit - logsumexp) and, on request, the entropy, and
is wrapped in ``torch.utils.checkpoint`` so backward recomputes the chunk's logits instead of keeping
them. Peak memory of the head is then chunk_tokens x V floats, whatever N and T are. With V = 151,936,
256 rows x 256 tokens would otherwise hold 40 GB of float32 logits.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# Config fields of architectures whose logits are not just lm_head(last_hidden_state) (Gemma2 soft-capping,
# Cohere and Granite scaling); a value other than None / 1 means the split would give wrong log-probs.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def split_causal_lm(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder body, LM head) of a Hugging Face ``*ForCausalLM`` (Llama, Qwen2, Qwen3, ...).

    Raises a TypeError naming the class when the model cannot be split, or when its logits are more than
    the head applied to the body's last hidden state.
    """
    name = type(model).__name__
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    body = get_decoder() if callable(get_decoder) else None
    head = get_head() if callable(get_head) else None
    if body is None or head is None or body is model:
        raise TypeError(f"{name}: chunked log-probs need a causal LM with get_decoder() and get_output_embeddings() "
                        "(a Hugging Face *ForCausalLM)")
    config = getattr(model, "config", None)
    for attr in _LOGIT_TRANSFORMS:
        value = getattr(config, attr, None)
        if value is not None and value != 1:
            raise TypeError(f"{name}: config.{attr}={value} transforms the logits after the LM head; "
                            "chunked log-probs support only logits = lm_head(hidden)")
    return body, head


def _chunk(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
           entropy_out: _Once | None) -> torch.Tensor:
    """Log-prob of each target for one chunk: hidden [C, H], targets [C] -> [C].

    With ``entropy_out``, the first call also appends the chunk's entropy (no grad) to it; the recompute
    in backward (a second call) skips it, so entropy costs one pass, not two.
    """
    logits = head(hidden).float()  # [C, V]
    lse = torch.logsumexp(logits, dim=-1)  # [C]
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse  # [C]
    if entropy_out is not None and not entropy_out.done:
        with torch.no_grad():  # H = -sum p log p = lse - sum p * logits
            entropy_out.append(lse - (torch.softmax(logits, dim=-1) * logits).sum(-1))  # [C]
    return logp


class _Once(list):
    """A list that ``_chunk`` fills on its first call only (``done`` is set once it has)."""

    done = False


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   mask: torch.Tensor, chunk_tokens: int,
                   entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(input_ids[:, t+1] | prefix) where ``mask`` [N, T-1] is set, in float32, as [N, T-1] (0 elsewhere).

    Matches ``masked_token_logprobs(model(...).logits, input_ids)`` on the masked positions, in values and
    gradients. With ``entropy``, also the per-token entropy of the next-token distribution [N, T-1]
    (detached, 0 outside the mask): the same chunks, no second pass over the vocabulary.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    body, head = split_causal_lm(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # [N, T, H]
    valid = mask > 0  # [N, T-1]
    picked_hidden = hidden[:, :-1][valid]  # [P, H] only positions whose target is scored
    targets = input_ids[:, 1:][valid]  # [P]
    # One chunk holds no more than chunk_tokens x V floats whether kept or recomputed: keep it (no second pass)
    recompute = torch.is_grad_enabled() and picked_hidden.requires_grad and targets.shape[0] > chunk_tokens
    logps, entropies = [], []
    for start in range(0, targets.shape[0], chunk_tokens):
        sink = _Once() if entropy else None
        args = (head, picked_hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens], sink)
        # backward recomputes this chunk's [C, V] logits rather than keeping them alive
        logps.append(checkpoint(_chunk, *args, use_reentrant=False, preserve_rng_state=False) if recompute
                     else _chunk(*args))
        if sink is not None:
            sink.done = True
            entropies += sink
    zeros = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)  # [N, T-1]
    if not logps:  # nothing to score: a zero loss that backward() still accepts
        return zeros.requires_grad_(torch.is_grad_enabled()), (zeros.clone() if entropy else None)
    logp = zeros.masked_scatter(valid, torch.cat(logps))  # [N, T-1]
    ent = zeros.masked_scatter(valid, torch.cat(entropies)) if entropy else None  # [N, T-1]
    return logp, ent
