from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from rlcadence.engines.base import Completion, Engine, SamplingParams
from rlcadence.models.tiny import build_tokenizer
from rlcadence.prompts import encode_prompt
from rlcadence.reward_models import JudgeScorer, SequenceClassifierScorer, normalize_rewards

PROMPTS = ["Say hi.", "Count to three.", "Name a colour.", "2+2=", "Why?"]
COMPLETIONS = ["hi", "one two three", "blue", "4", "because it is a rather long explanation of things"]


def save_tiny_reward_model(path: Path, chat_template: str | None = None, pad: bool = True) -> Path:
    torch.manual_seed(0)
    tok = build_tokenizer()
    if chat_template:
        tok.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=tok.pad_token_id if pad else None,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    if not pad:
        tok.pad_token = None
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return save_tiny_reward_model(tmp_path_factory.mktemp("rm"))


def test_sequence_classifier_scores_batched_like_one_by_one(rm_dir):
    batched = SequenceClassifierScorer(str(rm_dir), batch_size=16)(PROMPTS, COMPLETIONS)
    single = SequenceClassifierScorer(str(rm_dir), batch_size=1)(PROMPTS, COMPLETIONS)
    assert len(batched) == len(PROMPTS) and {r.detail for r in batched} == {"score"}
    # padding must not change a row's score: the head reads each row's last real token
    torch.testing.assert_close(
        torch.tensor([r.reward for r in batched]), torch.tensor([r.reward for r in single])
    )
    assert len({round(r.reward, 6) for r in batched}) > 1  # an untrained head still separates inputs


def test_sequence_classifier_score_is_the_logit_of_the_pair(rm_dir):
    scorer = SequenceClassifierScorer(str(rm_dir))
    enc = scorer.tokenizer(PROMPTS[0], COMPLETIONS[0], return_tensors="pt")
    with torch.no_grad():
        expected = scorer.model(**enc).logits[0, 0].item()
    assert scorer(PROMPTS[:1], COMPLETIONS[:1])[0].reward == pytest.approx(expected, abs=1e-5)


def test_sequence_classifier_uses_chat_template_and_tolerates_missing_pad(tmp_path):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    path = save_tiny_reward_model(tmp_path / "rm", chat_template=template, pad=False)
    scorer = SequenceClassifierScorer(str(path), batch_size=2)
    assert scorer.chat and scorer.model.config.pad_token_id == scorer.tokenizer.eos_token_id
    enc = scorer.tokenizer("<user>Say hi.<assistant>hi", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        expected = scorer.model(**enc).logits[0, 0].item()
    assert scorer(PROMPTS[:3], COMPLETIONS[:3])[0].reward == pytest.approx(expected, abs=1e-5)


class FixedTextJudgeEngine:
    """A fake Engine for parsing tests: returns canned judge texts in order, records the requests."""

    def __init__(self, texts: list[str]):
        self.texts, self.calls = texts, []
        self.tokenizer = build_tokenizer()

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls.append((prompt_ids, n, sampling))
        return [
            [Completion(text=t, token_ids=[], logprobs=[], finish_reason="stop")]
            for t in self.texts[: len(prompt_ids)]
        ]

    def load_weights(self, model_dir: Path, version: int) -> None:
        pass

    @property
    def policy_version(self) -> int:
        return 0


def test_judge_parses_scores_and_never_raises():
    texts = [
        "8",
        "Score: 7.5/10",
        "I refuse to rate this response at all, it is a very long refusal.",
        "11",
        "0",
    ]
    engine = FixedTextJudgeEngine(texts)
    _typed: Engine = engine  # satisfies the Engine protocol (checked by type checkers)
    judge = JudgeScorer(engine, template="Q: {prompt}\nA: {completion}\nScore:", max_score=10)
    results = judge(["p1", "p2", "p3", "p4", "p5"], ["c1", "c2", "c3", "c4", "c5"])
    assert [r.reward for r in results] == [0.8, 0.75, 0.0, 0.0, 0.0]
    assert results[0].detail == "judge: 8"
    assert results[2].detail == "unparseable: I refuse to rate this response at all, it is a ver"
    assert results[3].detail == "out_of_range: 11"
    prompts, n, sampling = engine.calls[0]
    assert prompts[0] == encode_prompt(engine.tokenizer, "Q: p1\nA: c1\nScore:") and n == 1  # token ids, raw text
    assert sampling.temperature == 0.0


def test_judge_custom_regex_and_template_check():
    judge = JudgeScorer(
        FixedTextJudgeEngine(["rating=[[4]] (out of 5)"]), parse_regex=r"\[\[(\d)\]\]", max_score=5
    )
    assert judge(["p"], ["c"])[0].reward == 0.8
    with pytest.raises(KeyError):
        JudgeScorer(FixedTextJudgeEngine([]), template="{prompt} {answer}")


def test_normalize_rewards():
    # [1, 2, 3]: mean 2, population std sqrt(2/3) = 0.8164966
    z = normalize_rewards([1.0, 2.0, 3.0], "zscore")
    assert z == pytest.approx([-1.2247449, 0.0, 1.2247449])
    assert normalize_rewards([1.0, 2.0, 5.0], "minmax") == [0.0, 0.25, 1.0]
    assert normalize_rewards([3.0, 3.0], "zscore") == [0.0, 0.0]
    assert normalize_rewards([3.0, 3.0], "minmax") == [0.0, 0.0]
    assert normalize_rewards([1.5, -2.0], "none") == [1.5, -2.0]
    assert normalize_rewards([], "zscore") == []
    with pytest.raises(ValueError):
        normalize_rewards([1.0], "rank")  # type: ignore[arg-type]
