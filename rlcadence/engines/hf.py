"""Generation with a transformers causal LM: a plain sampling loop with a KV cache.

Written out (rather than ``model.generate``) so the per-token logprobs and the seeded
``torch.Generator`` are explicit: the same (weights, prompts, seed) give the same samples on CPU,
which is what makes a resumed step identical to an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from rlcadence.engines.base import Completion, SamplingParams

hf_logging.disable_progress_bar()  # per-load bars would flood flow logs; one tiny model loads many times


class TransformersEngine:
    """An :class:`~rlcadence.engines.base.Engine` over ``AutoModelForCausalLM``."""

    def __init__(self, model_dir: Path, version: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self._version = version

    @property
    def policy_version(self) -> int:
        return self._version

    def load_weights(self, model_dir: Path, version: int) -> None:
        fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        self.load_state_dict(fresh.state_dict(), version)

    def load_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """In-process weight sync (no disk round trip) from a trainer on the same machine."""
        self.model.load_state_dict(state)
        self._version = version

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return [bos + self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        ids = [p for p in self.encode_prompts(prompts) for _ in range(n)]  # prompt i repeated n times
        tokens, logprobs, finished_by_eos = self._sample(ids, sampling)
        out: list[list[Completion]] = []
        for i in range(len(prompts)):
            group = []
            for j in range(i * n, (i + 1) * n):
                text = self.tokenizer.decode(tokens[j], skip_special_tokens=True)
                reason = "stop" if finished_by_eos[j] else "length"
                group.append(Completion(text=text, token_ids=tokens[j], logprobs=logprobs[j], finish_reason=reason))
            out.append(group)
        return out

    def _sample(self, prompt_ids: list[list[int]], sp: SamplingParams):
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        b, width = len(prompt_ids), max(len(p) for p in prompt_ids)
        input_ids = torch.full((b, width), pad, dtype=torch.long)  # [B, P] left-padded
        attn = torch.zeros((b, width), dtype=torch.long)
        for r, p in enumerate(prompt_ids):
            input_ids[r, width - len(p) :] = torch.tensor(p)
            attn[r, width - len(p) :] = 1
        input_ids, attn = input_ids.to(self.device), attn.to(self.device)
        gen = torch.Generator(device="cpu").manual_seed(sp.seed)
        done = torch.zeros(b, dtype=torch.bool)
        tokens: list[list[int]] = [[] for _ in range(b)]
        logps: list[list[float]] = [[] for _ in range(b)]
        past, cur_ids = None, input_ids
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        for _ in range(sp.max_new_tokens):
            out = self.model(
                input_ids=cur_ids, attention_mask=attn, position_ids=position_ids, past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()  # [B, V]
            logp_full = torch.log_softmax(logits, dim=-1)
            nxt = self._pick(logits, sp, gen)  # [B]
            chosen_logp = logp_full.gather(1, nxt[:, None]).squeeze(1)
            for r in range(b):
                if not done[r]:
                    tokens[r].append(int(nxt[r]))
                    logps[r].append(float(chosen_logp[r]))
            done |= nxt == eos
            if bool(done.all()):
                break
            cur_ids = nxt.where(~done, torch.tensor(pad))[:, None].to(self.device)
            attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=self.device)], dim=1)
            position_ids = position_ids[:, -1:] + 1
        return tokens, logps, [bool(x) for x in done]

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
    param = next(model.parameters())
    engine.device, engine.dtype = param.device, param.dtype
    return engine
