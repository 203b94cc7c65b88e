"""Prompt text -> token ids, in one place: the generator, the length check and the stored rollouts all use it.

Two forms of prompt:
- raw text: BOS (when the tokenizer has one) + the text's tokens, BOS exactly once;
- chat-formatted: the tokenizer's chat template, rendered to text once (:func:`format_chat`); its tokens
  are taken as they are, because the template is authoritative about BOS (Llama 3's contains
  ``<|begin_of_text|>``, Qwen's has none). This is what ``apply_chat_template(tokenize=True)`` does.
"""

from __future__ import annotations

from typing import Any


def format_chat(tokenizer: Any, text: str, system_prompt: str | None = None) -> str:
    """``text`` as the user turn (after an optional system turn), ending with the assistant's header."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompts(tokenizer: Any, texts: list[str], chat: bool | list[bool] = False,
                   chunk: int = 512) -> list[list[int]]:
    """Token ids of each prompt; ``chat`` says, for all or per prompt, whether the text is chat-formatted."""
    flags = chat if isinstance(chat, list) else [chat] * len(texts)
    bos = tokenizer.bos_token_id
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        out += [list(x) for x in tokenizer(texts[i : i + chunk], add_special_tokens=False)["input_ids"]]
    for k, (ids, formatted) in enumerate(zip(out, flags, strict=True)):
        if not formatted and bos is not None and not (ids and ids[0] == bos):
            out[k] = [bos, *ids]
    return out


def encode_prompt(tokenizer: Any, text: str, chat: bool = False) -> list[int]:
    """Token ids of one prompt: ``text`` is raw (``chat=False``) or already chat-formatted."""
    return encode_prompts(tokenizer, [text], chat)[0]


def pad_token_id(tokenizer: Any) -> int:
    """The id padded positions hold: the tokenizer's pad, else its EOS (Llama 3 has no pad token; padded
    positions are masked, so any id does, but it must be a real one)."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id
