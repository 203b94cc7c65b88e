"""Random-init models of real architectures (Llama 3, Qwen2.5, Qwen3), built locally with their real
vocabulary sizes, special tokens, chat templates and generation configs.

Nothing can be downloaded here, yet the real-model path (a 150k-row LM head, ChatML or Llama-3 chat
formatting, several EOS ids, no BOS for Qwen) has to be exercised on CPU. These directories load with
``AutoModelForCausalLM`` / ``AutoTokenizer`` like the hub models they imitate; only the weights (random)
and the hidden sizes (tiny) differ. The tokenizer is byte-level with no merges (one token per byte), its
unreachable filler tokens padding the vocabulary to the real size; special tokens sit at their real ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

Family = Literal["llama3", "qwen2", "qwen3"]

# Chat templates: the real ones' non-tool paths (Qwen2.5 adds its default system prompt; Qwen3 does not).
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

QWEN2_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # ids 151643 .. 151664
QWEN3_SPECIALS = QWEN2_SPECIALS + ["<tool_response>", "</tool_response>", "<think>", "</think>"]  # .. 151668
LLAMA3_SPECIALS = (
    ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
)  # ids 128000 .. 128255


@dataclass(frozen=True)
class FamilySpec:
    """What a family's tokenizer and generation config look like on the hub (ids are the real ones)."""

    vocab_size: int  # rows of the embedding (Qwen pads it beyond the tokenizer's length)
    n_regular: int  # ordinary BPE tokens; the special tokens follow from this id on
    specials: list[str]
    bos: str | None
    eos: str
    pad: str | None
    generation_eos: list[str]  # generation_config.json eos_token_id, in the real order
    chat_template: str


FAMILIES: dict[Family, FamilySpec] = {
    "qwen2": FamilySpec(151936, 151643, QWEN2_SPECIALS, None, "<|im_end|>", "<|endoftext|>",
                        ["<|im_end|>", "<|endoftext|>"], QWEN2_TEMPLATE),
    "qwen3": FamilySpec(151936, 151643, QWEN3_SPECIALS, None, "<|im_end|>", "<|endoftext|>",
                        ["<|im_end|>", "<|endoftext|>"], QWEN3_TEMPLATE),
    "llama3": FamilySpec(128256, 128000, LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", None,
                         ["<|end_of_text|>", "<|eot_id|>"], LLAMA3_TEMPLATE),
}


def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable symbol map (what the ByteLevel pre-tokenizer emits), in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _byte_level_vocab(n: int) -> dict[str, int]:
    """The 256 byte symbols, then 2- and 3-byte strings of them: ``n`` decodable (unreachable) tokens."""
    alphabet = _byte_symbols()
    vocab: dict[str, int] = {}
    for length in (1, 2, 3):
        for chars in product(alphabet, repeat=length):
            if len(vocab) == n:
                return vocab
            vocab["".join(chars)] = len(vocab)
    return vocab


def build_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer of the family's real length, special tokens at their real ids."""
    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE(vocab=_byte_level_vocab(spec.n_regular), merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(spec.specials)
    if spec.bos is not None:  # Llama 3 prepends BOS when special tokens are added, as the hub tokenizer does
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
                                                           special_tokens=[(spec.bos, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos,
                                   pad_token=spec.pad, model_max_length=131072)
    fast.chat_template = spec.chat_template
    assert fast.convert_tokens_to_ids(spec.specials[0]) == spec.n_regular, "special tokens off their real ids"
    return fast


@dataclass(frozen=True)
class TinySize:
    """Hidden sizes small enough for CPU tests; the vocabulary stays real."""

    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 512


def architecture_config(family: Family, tokenizer: PreTrainedTokenizerFast, size: TinySize = TinySize()):
    """The transformers config of a ``family`` model at ``size`` (real vocab, real special-token ids)."""
    spec = FAMILIES[family]
    ids = {"bos_token_id": tokenizer.bos_token_id if spec.bos else tokenizer.convert_tokens_to_ids("<|endoftext|>"),
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    common = dict(vocab_size=spec.vocab_size, hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
                  num_attention_heads=size.num_heads, num_key_value_heads=size.num_kv_heads,
                  intermediate_size=size.intermediate_size, max_position_embeddings=size.max_position_embeddings,
                  **ids)
    if family == "llama3":
        return LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={"rope_type": "default",
                                                                                   "rope_theta": 500000.0})
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    return Qwen3Config(**common, head_dim=size.hidden_size // size.num_heads, tie_word_embeddings=True)


def qwen25_05b_config() -> Qwen2Config:
    """The real Qwen2.5-0.5B(-Instruct) architecture (~494M parameters), for benches that random-init it."""
    return Qwen2Config(
        vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
        hidden_act="silu", bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, use_sliding_window=False,
    )


def generation_config(family: Family, tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    spec = FAMILIES[family]
    eos = [tokenizer.convert_tokens_to_ids(t) for t in spec.generation_eos]
    bos = tokenizer.bos_token_id if spec.bos else tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                            do_sample=True, temperature=0.7, top_p=0.8)


def build_random_model(family: Family, out_dir: Path, size: TinySize = TinySize(), seed: int = 0) -> Path:
    """Save a random-init ``family`` model with its tokenizer and generation config to ``out_dir``."""
    tokenizer = build_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(architecture_config(family, tokenizer, size))
    model.generation_config = generation_config(family, tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    assert AutoConfig.from_pretrained(out_dir).vocab_size == FAMILIES[family].vocab_size
    return out_dir
