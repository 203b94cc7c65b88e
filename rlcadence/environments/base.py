"""What every environment hands the loop: prompt rows (id, environment name, text, gold answer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptRow:
    prompt_id: str
    environment: str
    prompt: str
    gold: str | None
    chat: bool = False  # prompt is already chat-formatted: encode it as is (see rlcadence.prompts)
