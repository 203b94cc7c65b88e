"""Prompt datasets from local files: JSONL, Parquet, or a ``datasets.Dataset.save_to_disk`` directory.

Every row is checked before a run starts. A malformed row (invalid JSON, a missing, null or
non-string field, an empty prompt, a prompt over ``max_prompt_tokens``) either fails the load with
one error listing the bad rows (``on_bad_row="fail"``, the default) or is dropped and returned in
``LoadedPrompts.rejected`` (``"skip"``), which the flow writes to the ``rejected`` table.

Row numbers: JSONL rows are 1-based LINE numbers (what an editor shows; blank lines count but are
not rows); Parquet and save_to_disk rows are 0-based ROW INDICES (what ``table.slice`` takes).

Prompt ids: the ``id_column`` value when one is given (duplicates are malformed rows), else a hash
of (environment, raw prompt), the same whatever the file format; a repeated prompt gets ``-1``, ``-2``...
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from rlcadence.environments.base import PromptRow
from rlcadence.prompts import encode_prompts, format_chat, has_chat_template
from rlcadence.strict import Strict

log = logging.getLogger(__name__)

# Paper A (arXiv 2506.21495): the prompt ends with "The final answer is $\boxed{...}$". Braces are
# doubled because templates are str.format strings.
MATH_TEMPLATE = "{prompt}\nThe final answer is $\\boxed{{}}$."
# The Qwen2.5-Math / DeepSeek-R1 phrasing, an alternative for models trained on it.
MATH_TEMPLATE_STEP_BY_STEP = (
    "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
)
DEFAULT_TEMPLATES = {"math": MATH_TEMPLATE}  # any other environment: "{prompt}"

MAX_RAW_CHARS = 2000  # a rejected row keeps at most this much of its raw text
MAX_LISTED = 20  # bad rows spelled out in a DatasetError

REJECTED_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),  # JSONL: 1-based line number; Parquet / save_to_disk: 0-based row index
        ("reason", pa.string()),
        ("raw", pa.string()),  # the row as JSON (or the raw line when it is not JSON), truncated
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message names the file (and bad rows)."""


class PromptSource(Strict):
    """Where an environment's prompts come from and how they become model inputs."""

    path: str = Field(
        description="A local .jsonl or .parquet file, or a directory from Dataset.save_to_disk."
    )
    environment: str = Field("math", description="Environment name stored with every rollout; picks the default template.")
    prompt_column: str = Field("prompt", description="Column (JSON key) holding the prompt text.")
    gold_column: str | None = Field(
        "gold", description="Column with the reference answer; None for environments without one."
    )
    id_column: str | None = Field(
        None, description="Column with a unique prompt id; None hashes (environment, prompt)."
    )
    template: str | None = Field(
        None,
        description="str.format template with {prompt} (literal braces doubled); None: the environment's default "
        "(math: MATH_TEMPLATE, others: '{prompt}').",
    )
    use_chat_template: bool = Field(
        True,
        description="Wrap the rendered prompt as a user turn with the tokenizer's chat template, if it has one.",
    )
    system_prompt: str | None = Field(
        None, description="System turn before the user turn (needs a tokenizer with a chat template)."
    )
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="Longer prompts (token ids as the engine sees them: chat markup and BOS included) are "
        "malformed rows. None: the model's max_position_embeddings - sampling.max_new_tokens.",
    )
    on_bad_row: Literal["fail", "skip"] = Field(
        "fail", description="fail: raise listing bad rows; skip: drop them."
    )
    split: str | None = Field(None, description="Split of a saved DatasetDict (needed when it has several).")

    @field_validator("path", mode="before")
    @classmethod
    def _path_as_str(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("template")
    @classmethod
    def _template_formats(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "{prompt}" not in v:
            raise ValueError("template must contain {prompt}")
        try:
            v.format(prompt="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"template is not a str.format template with only {{prompt}} ({e!r}); double literal braces"
            ) from e
        return v

    def resolved_template(self) -> str:
        return self.template if self.template is not None else DEFAULT_TEMPLATES.get(self.environment, "{prompt}")


@dataclass(frozen=True)
class RejectedRow:
    file: str
    row: int  # JSONL: 1-based line number; Parquet / save_to_disk: 0-based row index
    reason: str
    raw: str  # JSON of the row (or the raw line), at most MAX_RAW_CHARS


@dataclass
class LoadedPrompts:
    rows: list[PromptRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


def load_prompts(source: PromptSource, tokenizer: Any = None, default_max_prompt_tokens: int | None = None) -> LoadedPrompts:
    """Read, check and render every prompt of ``source`` (in file order).

    Lengths are checked only with a tokenizer, against ``source.max_prompt_tokens`` or, when that is None,
    ``default_max_prompt_tokens`` (the model's context minus the completion budget).
    """
    path = Path(source.path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path {str(path)!r} does not exist")
    records, row_label = _read(path, source)
    file = str(path)
    template = source.resolved_template()
    chat = bool(source.use_chat_template and tokenizer is not None and has_chat_template(tokenizer))
    if source.system_prompt is not None and tokenizer is not None and not chat:
        raise DatasetError(f"environment {source.environment!r}: system_prompt is set but prompts are not "
                           "chat-formatted (use_chat_template is false or the model's tokenizer has no chat template)")

    rejected: list[RejectedRow] = []
    # (row, raw prompt, rendered prompt, gold, id or None, raw JSON) of the rows that passed so far
    candidates: list[tuple[int, str, str, str | None, str | None, str]] = []
    seen_ids: dict[str, int] = {}
    for row, record, raw, error in records:
        reason = error or _check(record, source)
        if reason is None and source.id_column is not None:
            pid = str(record[source.id_column])
            if pid in seen_ids:
                reason = f"duplicate id {pid!r} (first at {row_label} {seen_ids[pid]})"
            seen_ids.setdefault(pid, row)
        if reason is not None:
            rejected.append(RejectedRow(file, row, reason, raw[:MAX_RAW_CHARS]))
            continue
        prompt = record[source.prompt_column]
        rendered = template.format(prompt=prompt)
        if chat:
            rendered = format_chat(tokenizer, rendered, source.system_prompt)
        gold = record[source.gold_column] if source.gold_column else None
        pid = str(record[source.id_column]) if source.id_column else None
        candidates.append((row, prompt, rendered, gold, pid, raw))

    limit = source.max_prompt_tokens if source.max_prompt_tokens is not None else default_max_prompt_tokens
    if limit is not None and tokenizer is not None:
        lengths = [len(ids) for ids in encode_prompts(tokenizer, [c[2] for c in candidates], chat)]
        how = "" if source.max_prompt_tokens is not None else " (the default: model max_position_embeddings - sampling.max_new_tokens)"
        kept = []
        for c, n in zip(candidates, lengths, strict=True):
            if n > limit:
                reason = f"prompt has {n} tokens > max_prompt_tokens={limit}{how}"
                rejected.append(RejectedRow(file, c[0], reason, c[5][:MAX_RAW_CHARS]))
            else:
                kept.append(c)
        candidates = kept
        rejected.sort(key=lambda r: r.row)

    if rejected and source.on_bad_row == "fail":
        raise DatasetError(f"environment {source.environment!r}: " + _describe(file, rejected, row_label))
    if not candidates:
        raise DatasetError(f"environment {source.environment!r}: {file}: no usable rows ({len(rejected)} rejected)")
    if rejected:
        log.warning("%s: skipped %d malformed rows (see the rejected table)", file, len(rejected))
    return LoadedPrompts(rows=_with_ids(source.environment, candidates, chat), rejected=rejected)


def rejected_to_arrow(rejected: list[RejectedRow], run_id: str) -> pa.Table:
    """Rows for the store's ``rejected`` table (schema :data:`REJECTED_SCHEMA`)."""
    now = datetime.now(timezone.utc)
    rows = [
        {"run_id": run_id, "file": r.file, "row": r.row, "reason": r.reason, "raw": r.raw, "created_at": now}
        for r in rejected
    ]
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)


# ----------------------------------------------------------------------------------------------- reading

Record = tuple[int, Any, str, str | None]  # (row number, parsed record, raw JSON text, read error or None)


def _read(path: Path, source: PromptSource) -> tuple[Iterator[Record], str]:
    if path.is_dir():
        return _read_saved(path, source), "row"
    if path.suffix == ".jsonl":
        return _read_jsonl(path), "line"
    if path.suffix == ".parquet":
        return _read_parquet(path, source), "row"
    raise DatasetError(
        f"unsupported dataset file {str(path)!r}: use .jsonl, .parquet or a save_to_disk directory"
    )


def _read_jsonl(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, None, line.decode("utf-8", "replace"), f"invalid UTF-8 ({e.reason})"
                continue
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text), text.rstrip("\n"), None
            except json.JSONDecodeError as e:
                yield line_no, None, text.rstrip("\n"), f"invalid JSON ({e.msg} at column {e.colno})"


def _columns(source: PromptSource) -> list[str]:
    return [c for c in (source.id_column, source.prompt_column, source.gold_column) if c is not None]


def _require_columns(path: Path, available: list[str], source: PromptSource) -> list[str]:
    """A missing column is a config error, not a row error: fail whatever on_bad_row says."""
    missing = [c for c in _columns(source) if c not in available]
    if missing:
        raise DatasetError(
            f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(available)})"
        )
    return _columns(source)


def _read_parquet(path: Path, source: PromptSource) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:  # a corrupt or truncated file names itself, at open or mid-read
        pf = pq.ParquetFile(path)
        columns = _require_columns(path, pf.schema_arrow.names, source)
        index = 0
        for batch in pf.iter_batches(batch_size=4096, columns=columns):
            for record in batch.to_pylist():
                yield index, record, _to_json(record), None
                index += 1
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({str(e).strip().splitlines()[0]})") from None


def _read_saved(path: Path, source: PromptSource) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DatasetError(f"{path} is a directory but not a datasets save_to_disk directory ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if source.split is None and len(ds) != 1:
            raise DatasetError(f"{path} holds splits {list(ds)}: set split")
        ds = ds[source.split] if source.split is not None else next(iter(ds.values()))
    columns = _require_columns(path, ds.column_names, source)
    index = 0
    for batch in ds.select_columns(columns).iter(batch_size=4096):
        for values in zip(*(batch[c] for c in columns), strict=True):
            record = dict(zip(columns, values, strict=True))
            yield index, record, _to_json(record), None
            index += 1


def _to_json(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------------------------- checking


def _check(record: Any, source: PromptSource) -> str | None:
    """Why a parsed record is unusable, or None."""
    if not isinstance(record, dict):
        return f"not a JSON object (got {type(record).__name__})"
    for col in _columns(source):
        value = record.get(col)
        if value is None:
            return f"missing field {col!r}" + (" (null)" if col in record else "")
        allowed = (str, int) if col == source.id_column else (str,)
        if not isinstance(value, allowed) or isinstance(value, bool):
            return f"field {col!r} is {type(value).__name__}, not a string"
    if not record[source.prompt_column].strip():
        return "empty prompt"
    return None


def _with_ids(environment: str, candidates: list, chat: bool) -> list[PromptRow]:
    rows, seen = [], {}
    for _, prompt, rendered, gold, pid, _ in candidates:
        if pid is None:
            base = hashlib.sha1(f"{environment}\n{prompt}".encode()).hexdigest()[:16]
            k = seen.get(base, 0)
            seen[base] = k + 1
            pid = base if k == 0 else f"{base}-{k}"
        rows.append(PromptRow(prompt_id=pid, environment=environment, prompt=rendered, gold=gold, chat=chat))
    return rows


def _describe(file: str, rejected: list[RejectedRow], row_label: str) -> str:
    lines = [f"{file}: {len(rejected)} malformed row(s) (on_bad_row='fail'; use 'skip' to drop them):"]
    lines += [f"  {row_label} {r.row}: {r.reason}" for r in rejected[:MAX_LISTED]]
    if len(rejected) > MAX_LISTED:
        lines.append(f"  ... and {len(rejected) - MAX_LISTED} more")
    return "\n".join(lines)
