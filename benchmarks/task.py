"""A benchmark task: its folder of split files, loaded lazily, and how its answers are scored.

A `Task` reads a split the first time it is asked for and keeps it; its answer type is derived
from the gold targets of all its splits on first use (see `answer_types`). Scoring options are
fixed when the task is made: the metric (accuracy, or ROUGE-L), how ROUGE-L combines several
references ("mean", the paper's choice, or "max"), the answer rules ("reference", the reference
implementation's scoring and the default, or "lenient", see docs/fidelity.md) and the ROUGE
package ("rouge", the reference's, or "rouge_score", stemmed and lowercased).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from backends.errors import ConfigError
from benchmarks.answer_types import (
    AnswerSpec,
    AnswerType,
    BooleanVocabulary,
    Metric,
    classify_target,
    derive_answer_spec,
)
from benchmarks.jsonl_reader import read_split_file
from benchmarks.mmlu_categories import MMLU_CATEGORIES
from benchmarks.sample import SPLIT_ALIASES, SPLITS, Sample

logger = logging.getLogger(__name__)

RougeReduction = Literal["mean", "max"]
ROUGE_REDUCTIONS: tuple[str, ...] = ("mean", "max")
AnswerRules = Literal["reference", "lenient"]
ANSWER_RULES: tuple[str, ...] = ("reference", "lenient")
RougePackage = Literal["rouge", "rouge_score"]
ROUGE_PACKAGES: tuple[str, ...] = ("rouge", "rouge_score")
_CLASSIFIED_TYPES = (AnswerType.MULTIPLE_CHOICE, AnswerType.BOOLEAN, AnswerType.NUMERIC)


class Task:
    """One task, e.g. `bbh/navigate` (group "bbh", subtask "navigate") or `gsm8k`."""

    __slots__ = (
        "_answer_spec",
        "_metric",
        "_splits",
        "answer_rules",
        "directory",
        "name",
        "rouge_package",
        "rouge_reduction",
    )

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        metric: Metric | str | None = None,
        rouge_reduction: RougeReduction = "mean",
        answer_rules: AnswerRules = "reference",
        rouge_package: RougePackage = "rouge",
    ) -> None:
        self.name = name
        self.directory = directory
        _check_choice(name, "ROUGE reduction", rouge_reduction, ROUGE_REDUCTIONS)
        _check_choice(name, "answer rules", answer_rules, ANSWER_RULES)
        _check_choice(name, "ROUGE package", rouge_package, ROUGE_PACKAGES)
        self.rouge_reduction: RougeReduction = rouge_reduction
        self.answer_rules: AnswerRules = answer_rules
        self.rouge_package: RougePackage = rouge_package
        self._splits: dict[str, tuple[Sample, ...]] = {}
        self._answer_spec: AnswerSpec | None = None
        self._metric: Metric | None = self._parse_metric(metric)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, directory={str(self.directory)!r})"

    @property
    def group(self) -> str:
        """The benchmark the task belongs to: "bbh", "mmlu", "gsm8k", "wsc", "webnlg"."""
        return self.name.split("/", 1)[0]

    @property
    def subtask(self) -> str | None:
        """The part after the group ("navigate" for bbh/navigate), None for single tasks."""
        parts = self.name.split("/", 1)
        return parts[1] if len(parts) == 2 else None

    @property
    def category(self) -> str | None:
        """MMLU's category (STEM, Humanities, Social Sciences, Other); None outside MMLU."""
        if self.group != "mmlu" or self.subtask is None:
            return None
        return MMLU_CATEGORIES.get(self.subtask)

    def split(self, name: str) -> tuple[Sample, ...]:
        """The samples of split `name` (train, eval, test, format, few_shot_examples)."""
        canonical = SPLIT_ALIASES.get(name, name)
        if canonical not in SPLITS:
            raise ConfigError(
                f"unknown split {name!r} for task {self.name}; choose one of {', '.join(SPLITS)}"
            )
        samples = self._splits.get(canonical)
        if samples is None:
            samples = read_split_file(self.directory / f"{canonical}.jsonl", canonical)
            self._splits[canonical] = samples
        return samples

    @property
    def answer_spec(self) -> AnswerSpec:
        if self._answer_spec is None:
            self._answer_spec = self._derive_answer_spec()
        return self._answer_spec

    @property
    def answer_type(self) -> AnswerType:
        return self.answer_spec.answer_type

    @property
    def boolean_vocabulary(self) -> BooleanVocabulary | None:
        return self.answer_spec.vocabulary

    @property
    def metric(self) -> Metric:
        """The metric chosen when the task was made; by default ROUGE-L for free text, else
        accuracy."""
        if self._metric is not None:
            return self._metric
        return Metric.ROUGE_L if self.answer_type is AnswerType.FREE_TEXT else Metric.ACCURACY

    def _derive_answer_spec(self) -> AnswerSpec:
        present = [s for s in SPLITS if (self.directory / f"{s}.jsonl").is_file()]
        if not present:
            # Surfaces the missing-file DataError for the split every task must have.
            self.split("test")
        samples = [sample for split in present for sample in self.split(split)]
        spec = derive_answer_spec(self.name, samples)
        if spec.answer_type in _CLASSIFIED_TYPES:
            outliers = [s for s in samples if classify_target(s.target)[0] != spec.answer_type]
            if outliers:
                logger.info(
                    "%s: %d of %d gold targets are not %s (e.g. %r in %s); they are scored by "
                    "exact match",
                    self.name,
                    len(outliers),
                    len(samples),
                    spec.answer_type.value,
                    outliers[0].target,
                    outliers[0].id,
                )
        return spec

    def _parse_metric(self, metric: Metric | str | None) -> Metric | None:
        if metric is None:
            return None
        try:
            return Metric(metric)
        except ValueError:
            known = ", ".join(m.value for m in Metric)
            raise ConfigError(
                f"unknown metric {metric!r} for task {self.name}; choose one of {known}"
            ) from None


def _check_choice(task: str, what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(
            f"unknown {what} {value!r} for task {task}; choose one of {', '.join(valid)}"
        )
