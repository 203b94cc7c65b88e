"""Generation with a transformers causal LM: a plain sampling loop with a KV cache.

Written out (rather than ``model.generate``) so the per-token logprobs and the seeded
``torch.Generator`` are explicit: the same (weights, prompts, seed) give the same samples on CPU,
which is what makes a resumed step identical to an uninterrupted one.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as hf_logging

from rlcadence.engines.base import Completion, SamplingParams
from rlcadence.prompts import pad_token_id

hf_logging.disable_progress_bar()  # per-load bars would flood flow logs; one tiny model loads many times


def stop_token_ids(tokenizer, model) -> set[int]:
    """The tokenizer's EOS plus every eos id of the model's generation config (Qwen: <|im_end|> and
    <|endoftext|>; Llama 3: <|end_of_text|> and <|eot_id|>)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, list | tuple) else {gen_eos}
    return {int(i) for i in ids if i is not None}


def completion_text(tokenizer, ids: list[int], stops: list[str]) -> str:
    """A completion's text, special tokens skipped, cut before the earliest stop string (as vLLM and the
    OpenAI API do); both engines use this, so their rows agree on the same tokens."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(found)] if found else text


class TransformersEngine:
    """An :class:`~rlcadence.engines.base.Engine` over ``AutoModelForCausalLM``."""

    def __init__(self, model_dir: Path, version: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self._version = version
        self.last_sync: dict[str, float] = {}  # seconds and bytes of the latest sync (for the step's metrics)

    @property
    def policy_version(self) -> int:
        return self._version

    def load_weights(self, model_dir: Path, version: int) -> None:
        fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        self.load_state_dict(fresh.state_dict(), version)

    def load_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """In-process weight sync (no disk round trip) from a trainer on the same machine."""
        t0 = time.perf_counter()
        self.model.load_state_dict(state)
        self._version = version
        nbytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        self.last_sync = {"time/sync_s": time.perf_counter() - t0, "weight_sync/bytes": float(nbytes)}

    def stop_token_ids(self) -> set[int]:
        return stop_token_ids(self.tokenizer, self.model)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        if prompt_ids and not isinstance(prompt_ids[0], list | tuple):
            raise TypeError("generate takes prompt token ids (list[list[int]]); encode text with rlcadence.prompts")
        ids = [list(p) for p in prompt_ids for _ in range(n)]  # prompt i repeated n times
        tokens, logprobs, reasons, texts = self._sample(ids, sampling)
        out: list[list[Completion]] = []
        for i in range(len(prompt_ids)):
            out.append([Completion(text=texts[j], token_ids=tokens[j], logprobs=logprobs[j], finish_reason=reasons[j])
                        for j in range(i * n, (i + 1) * n)])
        return out

    def _cache_kwarg(self) -> str:
        """transformers >= 5.2x names the KV cache argument ``cache`` (``past_key_values`` warns, then goes);
        older versions (5.17 on the GPU machine) only know ``past_key_values``."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stop_string_end(self, ids: list[int], stops: list[str]) -> int | None:
        """Where the earliest stop string starts in the decoded completion, or None."""
        text = self._decode(ids)
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        return min(found) if found else None

    def _sample(self, prompt_ids: list[list[int]], sp: SamplingParams):
        """Sample until a stop id, a stop string or ``max_new_tokens``.

        Returns per row: tokens (the stopping token included), their logprobs, the finish reason and the
        text (special tokens skipped; cut before a stop string, as vLLM and the OpenAI API do).
        """
        stop_ids = self.stop_token_ids()
        pad = pad_token_id(self.tokenizer)  # Llama 3 has no pad token: its EOS (padded positions are masked)
        b, width = len(prompt_ids), max(len(p) for p in prompt_ids)
        input_ids = torch.full((b, width), pad, dtype=torch.long)  # [B, P] left-padded
        attn = torch.zeros((b, width), dtype=torch.long)
        for r, p in enumerate(prompt_ids):
            input_ids[r, width - len(p) :] = torch.tensor(p)
            attn[r, width - len(p) :] = 1
        dev = torch.device(self.device)
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        gen = torch.Generator(device=dev).manual_seed(sp.seed)  # on the CPU: the same stream as ever
        # Tokens and log-probs stay on the device in [B, max_new] buffers: one host copy at the end, not
        # one per token and row. Only stop strings need the host, one [B] copy per token, and only if set.
        tok_buf = torch.full((b, sp.max_new_tokens), pad, dtype=torch.long, device=dev)
        lp_buf = torch.zeros((b, sp.max_new_tokens), dtype=torch.float32, device=dev)
        n_new = torch.zeros(b, dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        host_tokens: list[list[int]] = [[] for _ in range(b)]
        cut: list[int | None] = [None] * b  # text offset of the stop string that ended the row
        stop_tensor = torch.tensor(sorted(stop_ids), device=dev)
        kv = {self._cache_kwarg(): DynamicCache(config=self.model.config)}  # filled in place, step by step
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kv["logits_to_keep"] = 1  # the prefill's LM head on the last position only: [B, 1, V], not [B, P, V]
        cur_ids = input_ids
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        for t in range(sp.max_new_tokens):
            out = self.model(input_ids=cur_ids, attention_mask=attn, position_ids=position_ids, use_cache=True, **kv)
            logits = out.logits[:, -1, :].float()  # [B, V], on the device
            nxt = self._pick(logits, sp, gen)  # [B]
            alive = ~done
            tok_buf[:, t] = nxt.where(alive, tok_buf[:, t])
            lp_buf[:, t] = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None]).squeeze(1)
            n_new += alive.long()
            finished = torch.isin(nxt, stop_tensor)
            if sp.stop:
                for r, (tok, live) in enumerate(zip(nxt.tolist(), alive.tolist(), strict=True)):
                    if live:
                        host_tokens[r].append(tok)
                        if tok not in stop_ids:
                            cut[r] = self._stop_string_end(host_tokens[r], sp.stop)
                finished |= torch.tensor([c is not None for c in cut], device=dev)
            done |= alive & finished
            if bool(done.all()):
                break
            cur_ids = nxt.where(~done, torch.tensor(pad, device=dev))[:, None]
            attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=dev)], dim=1)
            position_ids = position_ids[:, -1:] + 1
        lengths = n_new.tolist()
        tokens = [row[:n] for row, n in zip(tok_buf.tolist(), lengths, strict=True)]
        logps = [row[:n] for row, n in zip(lp_buf.tolist(), lengths, strict=True)]
        done = done.tolist()
        reasons = ["stop" if d else "length" for d in done]
        texts = [self._decode(t) if c is None else self._decode(t)[:c] for t, c in zip(tokens, cut, strict=True)]
        return tokens, logps, reasons, texts

    @staticmethod
    def _pick(logits: torch.Tensor, sp: SamplingParams, gen: torch.Generator) -> torch.Tensor:
        if sp.temperature == 0.0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / sp.temperature, dim=-1)  # [B, V]
        if sp.top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > sp.top_p  # keep the smallest prefix reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def engine_from_model(model, tokenizer, version: int) -> TransformersEngine:
    """Wrap an in-memory model (e.g. the trainer's, for evaluation) without copying it."""
    engine = TransformersEngine.__new__(TransformersEngine)
    engine.model, engine.tokenizer, engine._version = model, tokenizer, version
    engine.last_sync = {}
    param = next(model.parameters())
    engine.device, engine.dtype = param.device, param.dtype
    return engine
