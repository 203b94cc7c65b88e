"""Real architectures on CPU: random-init Llama 3 / Qwen2.5 / Qwen3 with their real vocabularies, prompt
encoding (chat template, BOS exactly once), stopping (every EOS id, stop strings) and model-dir checks."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcadence.engines.base import SamplingParams
from rlcadence.engines.hf import TransformersEngine
from rlcadence.models.random_init import qwen25_05b_config
from rlcadence.models.source import ModelNotFound, UnusableModel, check_model_dir
from rlcadence.models.tiny import TinyModelConfig, build_model, build_tokenizer, save_model
from rlcadence.prompts import encode_prompt, encode_prompts, format_chat
from tests.fixtures.random_models import qwen2_stopping, random_models, stop_prone  # noqa: F401 - fixtures

REAL = {  # family: (len(tokenizer), config vocab, {token: id}, eos, bos, generation_config eos ids)
    "qwen2": (151665, 151936, {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
              151645, None, [151645, 151643]),
    "qwen3": (151669, 151936, {"<|im_end|>": 151645, "<think>": 151667, "</think>": 151668},
              151645, None, [151645, 151643]),
    "llama3": (128256, 128256, {"<|begin_of_text|>": 128000, "<|start_header_id|>": 128006, "<|eot_id|>": 128009},
               128009, 128000, [128001, 128009]),
}


@pytest.mark.parametrize("family", list(REAL))
def test_random_init_directories_have_the_real_vocabulary_and_special_ids(random_models, family):  # noqa: F811
    n_tok, vocab, specials, eos, bos, gen_eos = REAL[family]
    tok = AutoTokenizer.from_pretrained(random_models[family])
    model = AutoModelForCausalLM.from_pretrained(random_models[family])
    assert len(tok) == n_tok and model.config.vocab_size == vocab
    assert model.get_output_embeddings().weight.shape[0] == vocab
    assert {t: tok.convert_tokens_to_ids(t) for t in specials} == specials
    assert (tok.eos_token_id, tok.bos_token_id) == (eos, bos)
    assert model.generation_config.eos_token_id == gen_eos
    assert model.config.model_type == {"llama3": "llama"}.get(family, family)


def test_qwen25_05b_architecture_config():
    cfg = qwen25_05b_config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings) == (896, 24, 14, 2, 4864, 151936, True)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3"])
def test_chat_prompt_ids_equal_apply_chat_template_and_bos_appears_once(random_models, family):  # noqa: F811
    tok = AutoTokenizer.from_pretrained(random_models[family])
    text = format_chat(tok, "What is 2+3? Answer é.", system_prompt="Be brief.")
    ids = encode_prompt(tok, text, chat=True)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3? Answer é."}]
    assert ids == tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    if family == "llama3":
        assert ids[0] == 128000 and ids.count(128000) == 1  # the template's <|begin_of_text|>, not a second one
        tail = tok("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)["input_ids"]
        assert tail[0] == 128006 and ids[-len(tail):] == tail  # ends with the assistant header
    else:
        assert ids[0] == 151644 and tok.bos_token_id is None  # Qwen: no BOS, ChatML from the first token
    assert "Be brief." in tok.decode(ids)


def test_raw_prompts_get_bos_exactly_once(random_models):  # noqa: F811
    llama = AutoTokenizer.from_pretrained(random_models["llama3"])
    plain = llama("12+3=", add_special_tokens=False)["input_ids"]
    assert encode_prompt(llama, "12+3=") == [128000, *plain]
    assert encode_prompt(llama, "<|begin_of_text|>12+3=") == [128000, *plain]  # already there: not doubled
    qwen = AutoTokenizer.from_pretrained(random_models["qwen2"])
    assert encode_prompt(qwen, "12+3=") == qwen("12+3=", add_special_tokens=False)["input_ids"]  # no BOS at all
    tiny = build_tokenizer()  # the embedded model: <bos> + characters, exactly as before token-id prompts
    assert encode_prompts(tiny, ["12+3=", "7+7="]) == [
        [tiny.bos_token_id] + tiny(p, add_special_tokens=False)["input_ids"] for p in ["12+3=", "7+7="]
    ]


def test_stop_ids_are_the_tokenizer_eos_and_every_generation_config_eos(random_models):  # noqa: F811
    assert TransformersEngine(random_models["qwen2"]).stop_token_ids() == {151645, 151643}
    assert TransformersEngine(random_models["llama3"]).stop_token_ids() == {128001, 128009}


def test_generation_stops_at_im_end(qwen2_stopping):  # noqa: F811
    engine = TransformersEngine(qwen2_stopping)
    ids = encode_prompts(engine.tokenizer, [format_chat(engine.tokenizer, "hi")], chat=True)
    group = engine.generate(ids, 12, SamplingParams(max_new_tokens=6, seed=3))[0]
    stopped = [c for c in group if c.finish_reason == "stop"]
    assert 0 < len(stopped) < 12 or all(c.finish_reason == "stop" for c in group)
    for c in group:
        ended = c.token_ids[-1] == 151645
        assert ended == (c.finish_reason == "stop") and c.token_ids.count(151645) == int(ended)
        assert len(c.token_ids) == len(c.logprobs) and (ended or len(c.token_ids) == 6)
        assert "<|im_end|>" not in c.text


def test_generation_stops_at_a_generation_config_eos_that_is_not_the_tokenizers(tmp_path, random_models):  # noqa: F811
    model_dir = tmp_path / "qwen2"
    shutil.copytree(random_models["qwen2"], model_dir)
    stop_prone(model_dir, 151643, 0.5)  # <|endoftext|>: in generation_config.json only
    engine = TransformersEngine(model_dir)
    group = engine.generate([encode_prompt(engine.tokenizer, "x")], 8, SamplingParams(max_new_tokens=5, seed=0))[0]
    ends = [c for c in group if c.finish_reason == "stop"]
    assert ends and all(c.token_ids[-1] == 151643 for c in ends)


def test_stop_string_ends_the_completion_after_the_token_that_completes_it(tmp_path):
    tok = build_tokenizer()
    model_dir = save_model(build_model(TinyModelConfig(), tok, seed=5), tok, tmp_path / "tiny")
    engine = TransformersEngine(model_dir)
    prompt = [encode_prompt(tok, "12+34=")]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    [[free]] = engine.generate(prompt, 1, greedy)
    assert free.finish_reason == "length" and len(free.text) >= 6, free.text  # a random model rambles
    stop = free.text[3:5]
    k = next(i for i in range(1, len(free.token_ids) + 1) if stop in tok.decode(free.token_ids[:i], skip_special_tokens=True))
    [[cut]] = engine.generate(prompt, 1, greedy.model_copy(update={"stop": ["@@never", stop]}))
    assert cut.token_ids == free.token_ids[:k] and cut.logprobs == free.logprobs[:k]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]  # the text ends before the stop string, as in vLLM


def _edit_json(path, **changes):
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_unknown_architecture_fails_naming_the_path(tmp_path, random_models):  # noqa: F811
    model_dir = tmp_path / "mystery"
    shutil.copytree(random_models["qwen3"], model_dir)
    _edit_json(model_dir / "config.json", model_type="mystery_lm", architectures=["MysteryForCausalLM"])
    with pytest.raises(UnusableModel, match=f"{model_dir}.*MysteryForCausalLM"):
        check_model_dir(model_dir)
    assert issubclass(UnusableModel, ModelNotFound)  # the CLI reports it like a missing model: one line


def test_tokenizer_without_eos_fails_naming_the_path(tmp_path, random_models):  # noqa: F811
    model_dir = tmp_path / "no-eos"
    shutil.copytree(random_models["qwen2"], model_dir)
    _edit_json(model_dir / "tokenizer_config.json", eos_token=None)  # null: no EOS (absent: a class default)
    assert AutoTokenizer.from_pretrained(model_dir).eos_token_id is None
    with pytest.raises(UnusableModel, match=f"{model_dir}.*no EOS"):
        check_model_dir(model_dir)
    assert check_model_dir(random_models["qwen2"]) == random_models["qwen2"]
