import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from rlcadence.environments.datasets import (
    MATH_TEMPLATE,
    REJECTED_SCHEMA,
    DatasetError,
    PromptSource,
    load_prompts,
    rejected_to_arrow,
)
from rlcadence.models.tiny import build_tokenizer

GOOD = [{"prompt": "1+1?", "gold": "2"}, {"prompt": "2+2?", "gold": "4"}, {"prompt": "3+3?", "gold": "6"}]


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def messy_jsonl(tmp_path):
    # line numbers (1-based) of the bad rows: 2 invalid JSON, 4 missing gold, 5 non-string prompt,
    # 6 empty prompt, 8 over-long prompt (with a tokenizer and max_prompt_tokens=40), 9 not an object
    lines = [
        json.dumps(GOOD[0]),
        '{"prompt": "broken", "gold": ',
        json.dumps(GOOD[1]),
        json.dumps({"prompt": "no gold here"}),
        json.dumps({"prompt": 17, "gold": "17"}),
        json.dumps({"prompt": "   ", "gold": "0"}),
        json.dumps(GOOD[2]),
        json.dumps({"prompt": "x" * 200, "gold": "0"}),
        "[1, 2]",
        "",  # blank lines are not rows
    ]
    return write_jsonl(tmp_path / "messy.jsonl", lines)


def test_fail_mode_names_file_and_lines(messy_jsonl):
    src = PromptSource(path=str(messy_jsonl), template="{prompt}", max_prompt_tokens=40)
    with pytest.raises(DatasetError) as err:
        load_prompts(src, tokenizer=build_tokenizer())
    msg = str(err.value)
    assert str(messy_jsonl) in msg and "6 malformed row(s)" in msg
    for expected in [
        "line 2: invalid JSON",
        "line 4: missing field 'gold'",
        "line 5: field 'prompt' is int, not a string",
        "line 6: empty prompt",
        "line 8: prompt has 201 tokens > max_prompt_tokens=40",  # BOS + 200 characters: what the engine sees
        "line 9: not a JSON object (got list)",
    ]:
        assert expected in msg


def test_skip_mode_keeps_good_rows_in_order_and_lists_rejected(messy_jsonl):
    src = PromptSource(path=str(messy_jsonl), template="Q: {prompt}", max_prompt_tokens=40, on_bad_row="skip")
    loaded = load_prompts(src, tokenizer=build_tokenizer())
    assert [r.prompt for r in loaded.rows] == ["Q: 1+1?", "Q: 2+2?", "Q: 3+3?"]
    assert [r.gold for r in loaded.rows] == ["2", "4", "6"]
    assert {r.environment for r in loaded.rows} == {"math"}
    assert len({r.prompt_id for r in loaded.rows}) == 3
    assert [r.row for r in loaded.rejected] == [2, 4, 5, 6, 8, 9]
    assert loaded.rejected[0].raw == '{"prompt": "broken", "gold": '  # not JSON: the line itself
    assert json.loads(loaded.rejected[1].raw) == {"prompt": "no gold here"}

    table = rejected_to_arrow(loaded.rejected, run_id="r1")
    assert table.schema == REJECTED_SCHEMA
    assert table.column("row").to_pylist() == [2, 4, 5, 6, 8, 9]
    assert set(table.column("run_id").to_pylist()) == {"r1"}
    assert table.column("file").to_pylist()[0] == str(messy_jsonl)


def test_without_tokenizer_length_is_not_checked(messy_jsonl):
    loaded = load_prompts(PromptSource(path=str(messy_jsonl), max_prompt_tokens=40, on_bad_row="skip"))
    assert len(loaded.rows) == 4  # the 200-character prompt is kept
    assert loaded.rows[0].prompt == MATH_TEMPLATE.format(prompt="1+1?")
    assert loaded.rows[0].prompt.endswith("The final answer is $\\boxed{}$.")


def test_missing_path_and_unsupported_suffix(tmp_path):
    with pytest.raises(DatasetError, match="nope.jsonl"):
        load_prompts(PromptSource(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "data.csv").write_text("prompt,gold\n")
    with pytest.raises(DatasetError, match="unsupported dataset file"):
        load_prompts(PromptSource(path=str(tmp_path / "data.csv")))


def test_all_rows_bad_in_skip_mode_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{", "{"])
    with pytest.raises(DatasetError, match="no usable rows"):
        load_prompts(PromptSource(path=str(path), on_bad_row="skip"))


def test_fail_mode_lists_at_most_20(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", ["not json"] * 25)
    with pytest.raises(DatasetError) as err:
        load_prompts(PromptSource(path=str(path)))
    assert (
        "line 20:" in str(err.value) and "line 21:" not in str(err.value) and "and 5 more" in str(err.value)
    )


def test_parquet_rows_are_0_based_and_columns_mapped(tmp_path):
    table = pa.table(
        {
            "question": ["a", None, "c", ""],
            "answer": ["1", "2", "3", "4"],
            "uid": ["q0", "q1", "q2", "q3"],
            "extra": [1, 2, 3, 4],
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    src = PromptSource(
        path=str(path),
        prompt_column="question",
        gold_column="answer",
        id_column="uid",
        environment="qa",
        on_bad_row="skip",
    )
    loaded = load_prompts(src)
    assert [(r.prompt_id, r.prompt, r.gold, r.environment) for r in loaded.rows] == [
        ("q0", "a", "1", "qa"),
        ("q2", "c", "3", "qa"),
    ]
    assert [(r.row, r.reason) for r in loaded.rejected] == [
        (1, "missing field 'question' (null)"),
        (3, "empty prompt"),
    ]
    with pytest.raises(DatasetError, match="row 1: missing field 'question'"):
        load_prompts(src.model_copy(update={"on_bad_row": "fail"}))
    with pytest.raises(DatasetError, match="no column 'prompt'"):  # a config error, whatever on_bad_row says
        load_prompts(PromptSource(path=str(path), on_bad_row="skip"))


def test_duplicate_ids_and_hashed_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"id": 7, "prompt": "p", "gold": "g"})] * 2)
    loaded = load_prompts(PromptSource(path=str(path), id_column="id", on_bad_row="skip"))
    assert [r.prompt_id for r in loaded.rows] == ["7"]
    assert loaded.rejected[0].reason == "duplicate id '7' (first at line 1)"
    # without an id column, a repeated prompt gets a suffix; the hash does not depend on the file format
    rows = load_prompts(PromptSource(path=str(path))).rows
    assert rows[1].prompt_id == rows[0].prompt_id + "-1"


def test_non_verifiable_environment_without_gold(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [json.dumps({"prompt": "Write a haiku."})])
    [row] = load_prompts(PromptSource(path=path, environment="chat", gold_column=None)).rows  # a Path is fine too
    assert row.gold is None and row.prompt == "Write a haiku."  # non-math environments default to "{prompt}"


def test_save_to_disk_directory(tmp_path):
    ds = datasets.Dataset.from_list(GOOD + [{"prompt": "", "gold": "0"}])
    ds.save_to_disk(str(tmp_path / "ds"))
    loaded = load_prompts(PromptSource(path=str(tmp_path / "ds"), template="{prompt}", on_bad_row="skip"))
    assert [r.prompt for r in loaded.rows] == ["1+1?", "2+2?", "3+3?"]
    assert [r.row for r in loaded.rejected] == [3]

    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DatasetError, match="set split"):
        load_prompts(PromptSource(path=str(tmp_path / "dd"), on_bad_row="skip"))
    loaded = load_prompts(PromptSource(path=str(tmp_path / "dd"), split="test", on_bad_row="skip"))
    assert len(loaded.rows) == 3

    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DatasetError, match="plain_dir"):
        load_prompts(PromptSource(path=str(tmp_path / "plain_dir")))


def test_chat_template_applied_with_generation_prompt(tmp_path):
    tok = build_tokenizer()  # char-level, built locally with `tokenizers` + PreTrainedTokenizerFast
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD[0])])
    [row] = load_prompts(PromptSource(path=str(path), template="Q: {prompt}"), tokenizer=tok).rows
    assert row.prompt == "<user>Q: 1+1?<assistant>"
    [row] = load_prompts(
        PromptSource(path=str(path), template="Q: {prompt}", use_chat_template=False), tokenizer=tok
    ).rows
    assert row.prompt == "Q: 1+1?"
    # the token limit applies to the rendered prompt, chat markup included: 24 characters here
    with pytest.raises(DatasetError, match="24 tokens > max_prompt_tokens=23"):
        load_prompts(
            PromptSource(path=str(path), template="Q: {prompt}", max_prompt_tokens=23), tokenizer=tok
        )


def test_template_validation():
    with pytest.raises(ValidationError, match="must contain"):
        PromptSource(path="x.jsonl", template="no placeholder")
    with pytest.raises(ValidationError, match="double literal braces"):
        PromptSource(path="x.jsonl", template="{prompt} \\boxed{}")
    with pytest.raises(ValidationError):
        PromptSource(path="x.jsonl", on_bad_row="ignore")
