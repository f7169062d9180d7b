"""Build the split layout from public datasets on the Hugging Face hub (needs `datasets`).

This reproduces the *layout* and split sizes of the reference data, not its exact samples: each
task's pool of hub records is shuffled with a fixed seed and cut into train / eval / test /
format / few_shot_examples. Prefer the reference splits when you have them (the paper's numbers
were measured on those). Sources:

| task | hub dataset | conversion |
|---|---|---|
| bbh/<task> | lukaemon/bbh, config <task> | `{"input", "target"}` as is |
| mmlu/<subject> | cais/mmlu, config <subject> | options appended as "(A) ..." lines |
| gsm8k | openai/gsm8k, config main | output = the integer after "####" |
| wsc | ErnestSDavis/winograd_wsc, config wsc273 | "What does the pronoun ... refer to?" |
| webnlg | GEM/web_nlg, config en | triples as lines, references as the output list |
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from backends.errors import ConfigError, GpoError
from benchmarks.data_dir import default_download_dir
from benchmarks.sample import SPLITS

logger = logging.getLogger(__name__)

Record = dict[str, Any]

SPLIT_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "bbh": (48, 48, 144, 5, 5),
    "mmlu": (20, 20, 60, 5, 5),
    "gsm8k": (100, 100, 300, 5, 5),
    "wsc": (50, 50, 150, 10, 10),
    "webnlg": (100, 100, 300, 5, 5),
}
"""Sizes per split, in the order of `SPLITS`; test shrinks when the pool is smaller."""

SPLIT_SEED = 0


def download(task_names: Iterable[str], data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch each task from the hub and write its split files; returns the data directory.

    Raises GpoError when `datasets` is not installed or the hub cannot be reached.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_download_dir()
    load_dataset = _import_load_dataset()
    for name in task_names:
        group = name.split("/", 1)[0]
        if group not in SPLIT_SIZES:
            raise ConfigError(f"no public source known for task {name!r}")
        records = _fetch_records(name, load_dataset)
        write_task_splits(records, root / name, SPLIT_SIZES[group])
        logger.info("wrote %s (%d records) under %s", name, len(records), root / name)
    return root


def write_task_splits(
    records: Sequence[Record], task_dir: Path, sizes: Sequence[int], seed: int = SPLIT_SEED
) -> None:
    """Shuffle `records` with `seed` and write disjoint split files sized by `sizes`."""
    train_n, eval_n, test_n, format_n, shot_n = sizes
    needed = train_n + eval_n + format_n + shot_n + 1
    if len(records) < needed:
        raise GpoError(f"{task_dir}: only {len(records)} records, need at least {needed}")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    counts = {
        "train": train_n,
        "eval": eval_n,
        "format": format_n,
        "few_shot_examples": shot_n,
    }
    counts["test"] = min(test_n, len(shuffled) - sum(counts.values()))
    task_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    for split in SPLITS:
        chunk = shuffled[start : start + counts[split]]
        start += counts[split]
        body = b"".join(orjson.dumps(record) + b"\n" for record in chunk)
        (task_dir / f"{split}.jsonl").write_bytes(body)


def _import_load_dataset() -> Callable[..., Any]:
    try:
        from datasets import load_dataset  # type: ignore[import-not-found]
    except ImportError:
        raise GpoError(
            "downloading benchmark data needs the `datasets` package: pip install datasets"
        ) from None
    return load_dataset


def _fetch_records(name: str, load_dataset: Callable[..., Any]) -> list[Record]:
    group, _, subtask = name.partition("/")
    try:
        if group == "bbh":
            rows = load_dataset("lukaemon/bbh", subtask, split="test")
            return [{"input": r["input"], "target": r["target"]} for r in rows]
        if group == "mmlu":
            rows = load_dataset("cais/mmlu", subtask, split="test")
            return [_mmlu_record(r) for r in rows]
        if group == "gsm8k":
            rows = load_dataset("openai/gsm8k", "main", split="test")
            return [_gsm8k_record(r) for r in rows]
        if group == "wsc":
            rows = load_dataset("ErnestSDavis/winograd_wsc", "wsc273", split="test")
            return [_wsc_record(r) for r in rows]
        rows = load_dataset("GEM/web_nlg", "en", split="test")
        return [_webnlg_record(r) for r in rows]
    except GpoError:
        raise
    except Exception as exc:  # the hub client raises many unrelated types when offline
        raise GpoError(
            f"could not download {name} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            "check the network, or set GPO_DATA_DIR to a directory holding the reference splits"
        ) from exc


def _options(choices: Sequence[str]) -> str:
    return "\n".join(f"({chr(ord('A') + i)}) {choice}" for i, choice in enumerate(choices))


def _mmlu_record(row: Record) -> Record:
    letter = chr(ord("A") + int(row["answer"]))
    return {"input": f"{row['question']}\n{_options(row['choices'])}", "output": f"({letter})"}


def _gsm8k_record(row: Record) -> Record:
    answer = str(row["answer"])
    final = re.sub(r"[,\s]", "", answer.rsplit("####", 1)[-1])
    return {"input": row["question"], "solution": answer, "output": int(final)}


def _wsc_record(row: Record) -> Record:
    question = f'{row["text"]} What does the pronoun "{row["pronoun"]}" refer to?'
    return {
        "input": f"{question}\n{_options(row['options'])}",
        "output": f"({chr(ord('A') + int(row['label']))})",
    }


def _webnlg_record(row: Record) -> Record:
    triples = "\n".join(row["input"])
    references = list(row.get("references") or [row["target"]])
    return {
        "input": f"Write the following triples as fluent English text.\n\nTriples:\n{triples}",
        "output": references,
        "id": row["gem_id"],
    }
