"""The final prompts the reference run reported per task (`reference_prompts.jsonl`).

They are a ready set of optimised prompts to evaluate. Records are `{"dataset", "task", "prompt"}`
for BBH and MMLU and `{"dataset", "prompt"}` for single tasks; the result is keyed by task name.
"""

from __future__ import annotations

import os

import orjson

from backends.errors import DataError
from benchmarks.data_dir import resolve_data_dir

REFERENCE_PROMPTS_FILE = "reference_prompts.jsonl"


def load_reference_prompts(data_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Task name ("bbh/navigate", "gsm8k") -> the reference run's final prompt."""
    path = resolve_data_dir(data_dir) / REFERENCE_PROMPTS_FILE
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        raise DataError("reference prompts file not found", path=str(path)) from None
    prompts: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"malformed JSON: {exc}", path=str(path), line=number) from None
        if not isinstance(record, dict):
            raise DataError("expected a JSON object", path=str(path), line=number)
        dataset, prompt = record.get("dataset"), record.get("prompt")
        if not isinstance(dataset, str) or not isinstance(prompt, str):
            raise DataError(
                "fields 'dataset' and 'prompt' must be strings", path=str(path), line=number
            )
        task = record.get("task")
        prompts[f"{dataset}/{task}" if task else dataset] = prompt
    return prompts
