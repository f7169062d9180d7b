"""One labelled example of a task, normalised from whatever shape its data file uses."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS: tuple[str, ...] = ("train", "eval", "test", "format", "few_shot_examples")
"""The split files every task folder holds: `<split>.jsonl`."""

SPLIT_ALIASES: dict[str, str] = {"dev": "eval", "few_shot": "few_shot_examples"}


@dataclass(frozen=True, slots=True)
class Sample:
    """A question and its gold answer.

    `target` is the gold answer as text (GSM8K's integer becomes its decimal string; for a task
    whose output is a list of references, the first reference). `references` holds that list and
    is empty for tasks with a single gold answer. `id` is the record's own "id" when it has one,
    else "<split>-<0-based line index>".
    """

    id: str
    input: str
    target: str
    references: tuple[str, ...] = ()
