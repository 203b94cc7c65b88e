"""The embedded model's shape as a config model: pydantic only, so validating a config never imports torch."""

from __future__ import annotations

from pydantic import Field

from rlcadence.strict import Strict


class TinyModelConfig(Strict):
    """Shape of the embedded default model (a Llama; ~0.4M parameters with the defaults)."""

    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=16)
    max_position_embeddings: int = Field(64, ge=16)
    tie_word_embeddings: bool = True
