"""The answer key: gold answers the simulated model can "know", and plausible wrong ones.

The caller builds the key from the data (`{question text: gold answer}`; the server never reads
benchmark files itself) or the CLI loads it from a JSON object. Questions are indexed by their
first non-empty line, so finding the question inside a prompt costs one dictionary lookup per
prompt line plus a substring check for the candidates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import orjson

from backends.errors import DataError

_OPTION_LETTER = re.compile(r"\(([A-Z])\)")
_SINGLE_OPTION = re.compile(r"^\(([A-Z])\)$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_CLOSING_BRACKETS = (")", "]", "}", ">")
_BOOLEAN_OPPOSITES = {
    "yes": "no",
    "no": "yes",
    "true": "false",
    "false": "true",
    "valid": "invalid",
    "invalid": "valid",
}


def gold_text(gold: object) -> str:
    """A gold answer as text: lists (several references) give their first item."""
    if isinstance(gold, list | tuple):
        return str(gold[0]).strip() if gold else ""
    return str(gold).strip()


def plausible_wrong_answer(gold: str, question: str, pick: int) -> str:
    """A wrong answer of the same kind as `gold`, chosen by `pick` where there are several.

    Another option letter present in the question for "(B)"-style golds, the other word for
    boolean-like golds, gold + 1 for numbers, a bracket short or another bracket for closing
    brackets, otherwise the words reversed (or "not ...").
    """
    option = _SINGLE_OPTION.match(gold)
    if option:
        letters = sorted(set(_OPTION_LETTER.findall(question)) - {option.group(1)})
        if not letters:
            letters = [c for c in "ABCD" if c != option.group(1)]
        return f"({letters[pick % len(letters)]})"
    opposite = _BOOLEAN_OPPOSITES.get(gold.lower())
    if opposite is not None:
        if gold.isupper():
            return opposite.upper()
        return opposite.capitalize() if gold[:1].isupper() else opposite
    if _NUMBER.match(gold):
        if "." in gold:
            return str(float(gold) + 1)
        return str(int(gold) + 1)
    words = gold.split()
    if words and all(word in _CLOSING_BRACKETS for word in words):
        if len(words) > 1:
            return " ".join(words[:-1])
        others = [b for b in _CLOSING_BRACKETS if b != gold]
        return others[pick % len(others)]
    if len(words) > 1 and words[::-1] != words:
        return " ".join(words[::-1])
    return f"not {gold}"


class AnswerKey:
    """Questions and their gold answers, searchable inside a prompt."""

    def __init__(self, answers: Mapping[str, object]) -> None:
        self._by_first_line: dict[str, list[tuple[str, str]]] = {}
        for question, gold in answers.items():
            text = question.strip()
            first = next((line.strip() for line in text.splitlines() if line.strip()), "")
            if not first:
                continue
            self._by_first_line.setdefault(first, []).append((text, gold_text(gold)))
        for candidates in self._by_first_line.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)
        self._size = sum(len(c) for c in self._by_first_line.values())

    def __len__(self) -> int:
        return self._size

    @classmethod
    def from_json_file(cls, path: str | Path) -> AnswerKey:
        """Load a JSON object `{question: gold}` (gold a string, number or list of references)."""
        try:
            data = orjson.loads(Path(path).read_bytes())
        except OSError as exc:
            raise DataError(f"cannot read answer key: {exc.strerror}", path=str(path)) from exc
        except orjson.JSONDecodeError as exc:
            raise DataError(f"answer key is not valid JSON: {exc}", path=str(path)) from exc
        if not isinstance(data, dict):
            raise DataError("answer key must be a JSON object {question: gold}", path=str(path))
        return cls(data)

    def find(self, text: str) -> tuple[str, str] | None:
        """The (question, gold) whose full text occurs in `text`, longest first; None if none."""
        index = self._by_first_line
        for line in text.splitlines():
            candidates = index.get(line.strip())
            if candidates is None:
                continue
            for question, gold in candidates:
                if question in text:
                    return question, gold
        return None
