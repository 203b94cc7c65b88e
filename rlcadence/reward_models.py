"""Scorers for tasks without a checkable answer: a reward model, an LLM judge, and reward normalisation.

A scorer sees the prompt too (a verifier sees only the gold): ``scorer(prompts, completions)`` returns
one :class:`~rlcadence.verifiers.base.VerifierResult` per pair with ``reward`` = the score.
Paper A (arXiv 2506.21495) scores WildChat responses with a reward model (Athene-RM-8B) and pairs
the highest- and lowest-scored responses for DPO; GRPO takes the scores as rewards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol

import torch

from rlcadence.engines.base import Engine, SamplingParams
from rlcadence.environments.spec import DEFAULT_JUDGE_TEMPLATE
from rlcadence.verifiers.base import VerifierResult


class Scorer(Protocol):
    def __call__(self, prompts: list[str], completions: list[str]) -> list[VerifierResult]: ...


class SequenceClassifierScorer:
    """A reward model loaded with ``AutoModelForSequenceClassification``; scored in batches, no gradients.

    Input: with ``use_chat_template`` and a tokenizer that has one, the conversation
    ``[user: prompt, assistant: completion]`` rendered by the chat template (how chat reward models such
    as Athene-RM or Skywork-Reward are trained); otherwise the tokenizer's text pair
    ``(prompt, completion)`` (how cross-encoder reward models such as OpenAssistant's DeBERTa are fed).
    Score: the raw logit of ``label`` (an index or a name from ``config.label2id``; default index 0,
    which for a ``num_labels=1`` head is the scalar reward). Inputs longer than ``max_length``
    (default: the model's position limit) are truncated from the right.
    """

    def __init__(
        self,
        path_or_id: str,
        batch_size: int = 16,
        device: str = "cpu",
        label: int | str = 0,
        use_chat_template: bool = True,
        max_length: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.batch_size, self.device = batch_size, device
        self.tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(path_or_id, dtype=dtype).to(device).eval()
        )
        if self.tokenizer.pad_token is None:  # Llama-style tokenizers have none; any id works under the mask
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # the head finds each row's last token through it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label = label if isinstance(label, int) else self.model.config.label2id[label]
        self.chat = bool(use_chat_template and getattr(self.tokenizer, "chat_template", None))
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = max_length or limit

    def _encode(self, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
        kw = {
            "padding": True,
            "truncation": self.max_length is not None,
            "max_length": self.max_length,
            "return_tensors": "pt",
        }
        if self.chat:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
                )
                for p, c in zip(prompts, completions, strict=True)
            ]
            return self.tokenizer(texts, add_special_tokens=False, **kw)
        return self.tokenizer(prompts, completions, **kw)

    @torch.inference_mode()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[VerifierResult]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scores: list[float] = []
        for i in range(0, len(prompts), self.batch_size):
            batch = self._encode(prompts[i : i + self.batch_size], completions[i : i + self.batch_size])
            logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits  # [B, num_labels]
            scores += logits[:, self.label].float().cpu().tolist()
        return [VerifierResult(s, "score") for s in scores]




class JudgeScorer:
    """An LLM judge: one greedy completion per (prompt, completion), the first number in it is the score.

    ``template`` is a str.format string with ``{prompt}`` and ``{completion}``. The first match of
    ``parse_regex`` (its group 1 if it has a group) is the score; reward = score / ``max_score``, in
    [0, 1]. Never raises on the judge's text: no match gives reward 0 and detail
    ``"unparseable: <first 50 chars>"``; a score outside [0, max_score] gives 0 and
    ``"out_of_range: <score>"`` (clipping would reward a judge that ignores the scale).
    """

    def __init__(
        self,
        engine: Engine,
        template: str = DEFAULT_JUDGE_TEMPLATE,
        parse_regex: str = r"(\d+(?:\.\d+)?)",
        max_score: float = 10,
        max_new_tokens: int = 16,
    ):
        if max_score <= 0:
            raise ValueError(f"max_score must be > 0, got {max_score}")
        template.format(prompt="", completion="")  # fail now on a field other than {prompt}/{completion}
        self.engine, self.template, self.max_score = engine, template, max_score
        self.pattern = re.compile(parse_regex)
        self.sampling = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)

    def parse(self, text: str) -> VerifierResult:
        m = self.pattern.search(text)
        try:
            score = float(m.group(1) if m.groups() else m.group(0)) if m else None
        except (TypeError, ValueError):  # a group that did not take part, or a non-number match
            score = None
        if score is None:
            return VerifierResult(0.0, f"unparseable: {text[:50]}")
        if not 0 <= score <= self.max_score:
            return VerifierResult(0.0, f"out_of_range: {score:g}")
        return VerifierResult(score / self.max_score, f"judge: {score:g}")

    def __call__(self, prompts: list[str], completions: list[str]) -> list[VerifierResult]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        asks = [
            self.template.format(prompt=p, completion=c) for p, c in zip(prompts, completions, strict=True)
        ]
        from rlcadence.prompts import encode_prompts

        answers = self.engine.generate(encode_prompts(self.engine.tokenizer, asks), 1, self.sampling)
        return [self.parse(group[0].text) for group in answers]


def normalize_rewards(
    rewards: Sequence[float], method: Literal["none", "zscore", "minmax"] = "none"
) -> list[float]:
    """Rescale a batch of scores; reward-model logits have an arbitrary offset and scale.

    zscore: (r - mean) / std (population std; all-equal rewards give zeros). minmax: (r - min) / (max - min)
    into [0, 1] (all-equal give zeros). none: unchanged. Normalise over the batch the advantage will
    see; group-relative advantages (GRPO) are already invariant to a per-batch offset.
    """
    r = [float(x) for x in rewards]
    if method == "none" or not r:
        return r
    if method == "zscore":
        mean = sum(r) / len(r)
        std = (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5
        return [(x - mean) / std if std > 0 else 0.0 for x in r]
    if method == "minmax":
        lo, hi = min(r), max(r)
        return [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in r]
    raise ValueError(f"unknown normalisation {method!r}: use 'none', 'zscore' or 'minmax'")
