"""Read one split file (JSON Lines) into `Sample`s, with errors that name the file and line.

Accepted record shapes (the reference data's): `{"input", "target"}` (BBH), `{"input", "output"}`
with a string (MMLU, WSC), an integer (GSM8K, which also carries a "solution") or a list of
references (WebNLG, which also carries an "id"). Blank lines are skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from backends.errors import DataError
from benchmarks.sample import Sample


def read_split_file(path: Path, split: str) -> tuple[Sample, ...]:
    """All samples of one split file; DataError for a missing, empty or malformed file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("split file not found", path=str(path)) from None
    except OSError as exc:
        raise DataError(f"cannot read split file: {exc.strerror}", path=str(path)) from None

    indexed: list[tuple[int, Sample]] = []
    for index, line in enumerate(raw.splitlines()):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"malformed JSON: {exc}", path=str(path), line=index + 1) from None
        indexed.append((index, _sample_from_record(record, f"{split}-{index}", path, index + 1)))
    if not indexed:
        raise DataError("split file holds no records", path=str(path))
    return _with_unique_ids(indexed, split)


def _with_unique_ids(indexed: list[tuple[int, Sample]], split: str) -> tuple[Sample, ...]:
    """Ids are keys downstream, so an id the file repeats (WebNLG's "id" is unique only within a
    category) becomes "<id>@<split>-<line index>" on every record that shares it."""
    counts = Counter(sample.id for _, sample in indexed)
    return tuple(
        sample if counts[sample.id] == 1 else replace(sample, id=f"{sample.id}@{split}-{index}")
        for index, sample in indexed
    )


def _sample_from_record(record: Any, default_id: str, path: Path, line: int) -> Sample:
    def fail(message: str) -> DataError:
        return DataError(message, path=str(path), line=line)

    if not isinstance(record, dict):
        raise fail(f"expected a JSON object, got {type(record).__name__}")
    if "input" not in record:
        raise fail("missing field 'input'")
    question = record["input"]
    if not isinstance(question, str):
        raise fail(f"field 'input' must be a string, got {type(question).__name__}")

    field = "target" if "target" in record else "output" if "output" in record else None
    if field is None:
        raise fail("missing field 'target' (or 'output')")
    value = record[field]
    references: tuple[str, ...] = ()
    if isinstance(value, str):
        target = value
    elif isinstance(value, int) and not isinstance(value, bool):
        target = str(value)
    elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        references = tuple(value)
        target = references[0]
    else:
        raise fail(
            f"field {field!r} must be a string, an integer or a non-empty list of strings, "
            f"got {type(value).__name__}"
        )
    if not target.strip():
        raise fail(f"field {field!r} is empty")

    record_id = record.get("id", default_id)
    if isinstance(record_id, bool) or not isinstance(record_id, str | int):
        raise fail(f"field 'id' must be a string or an integer, got {type(record_id).__name__}")
    return Sample(id=str(record_id), input=question, target=target, references=references)
