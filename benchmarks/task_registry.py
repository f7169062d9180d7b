"""Task names and groups: which tasks exist, how a group expands, and how a task is loaded.

Names are the data folders' relative paths: `bbh/navigate`, `mmlu/anatomy`, `gsm8k`, `wsc`,
`webnlg`. Groups expand to several: `bbh` (27 tasks), `mmlu` (57 subjects), `lite-bbh` (the
paper's ablation set) and `all`. The paper's tasks are always valid names; a data directory may add
more (any folder, one or two levels deep, holding a `test.jsonl`), which then join their group.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

from backends.errors import ConfigError, DataError
from benchmarks.data_dir import resolve_data_dir
from benchmarks.mmlu_categories import MMLU_CATEGORIES
from benchmarks.task import AnswerRules, RougePackage, RougeReduction, Task

BBH_TASKS: tuple[str, ...] = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)
SINGLE_TASKS: tuple[str, ...] = ("gsm8k", "wsc", "webnlg")

PAPER_TASK_NAMES: tuple[str, ...] = (
    *(f"bbh/{name}" for name in BBH_TASKS),
    *(f"mmlu/{name}" for name in sorted(MMLU_CATEGORIES)),
    *SINGLE_TASKS,
)

LITE_BBH: tuple[str, ...] = (
    "bbh/navigate",
    "bbh/movie_recommendation",
    "bbh/object_counting",
    "bbh/word_sorting",
)

TASK_GROUPS: tuple[str, ...] = ("all", "bbh", "mmlu", "lite-bbh")
"""Names that expand to several tasks (any top-level folder with subtasks is one too)."""

_MARKER_FILE = "test.jsonl"


def list_task_names(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Every valid task name: the paper's 87 plus any extra task folder in the data directory."""
    names = dict.fromkeys(PAPER_TASK_NAMES)
    root = resolve_data_dir(data_dir)
    if root.is_dir():
        names.update(dict.fromkeys(_discover_task_folders(root)))
    return list(names)


def resolve_task_names(
    names_or_groups: str | Iterable[str], data_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """Expand groups and validate names, keeping first-seen order without duplicates.

    A string is read as a comma-separated list ("bbh,gsm8k"). An unknown name raises ConfigError
    listing the valid ones.
    """
    if isinstance(names_or_groups, str):
        requested = [part.strip() for part in names_or_groups.split(",") if part.strip()]
    else:
        requested = [name.strip() for name in names_or_groups]
    known = list_task_names(data_dir)
    known_set = set(known)
    resolved: dict[str, None] = {}
    for name in requested:
        expanded = _expand(name, known, known_set)
        if expanded is None:
            raise _unknown_task_error(name, known)
        resolved.update(dict.fromkeys(expanded))
    if not resolved:
        raise ConfigError("no task names given; " + _valid_names_text(known))
    return list(resolved)


def load_task(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    metric: str | None = None,
    rouge_reduction: RougeReduction = "mean",
    answer_rules: AnswerRules = "reference",
    rouge_package: RougePackage = "rouge",
) -> Task:
    """The task called `name` (not a group), reading its data lazily from the data directory.

    `answer_rules` and `rouge_package` choose how answers are scored (see `Task`)."""
    name = name.strip()
    root = resolve_data_dir(data_dir)
    known = list_task_names(root)
    if name not in set(known):
        if _expand(name, known, set(known)) is not None:
            raise ConfigError(
                f"{name!r} is a group of tasks, not a task; expand it with resolve_task_names"
            )
        raise _unknown_task_error(name, known)
    directory = root / name
    if not directory.is_dir():
        raise DataError(
            f"no data folder for task {name}; download the data or point GPO_DATA_DIR at a "
            "directory holding it",
            path=str(directory),
        )
    return Task(
        name,
        directory,
        metric=metric,
        rouge_reduction=rouge_reduction,
        answer_rules=answer_rules,
        rouge_package=rouge_package,
    )


def _expand(name: str, known: list[str], known_set: set[str]) -> list[str] | None:
    if name in known_set:
        return [name]
    if name == "all":
        return list(known)
    if name == "lite-bbh":
        return list(LITE_BBH)
    members = [task for task in known if task.startswith(f"{name}/")]
    return members or None


def _discover_task_folders(root: Path) -> list[str]:
    found: list[str] = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if (entry / _MARKER_FILE).is_file():
            found.append(entry.name)
            continue
        found.extend(
            f"{entry.name}/{sub.name}"
            for sub in sorted(entry.iterdir())
            if sub.is_dir() and (sub / _MARKER_FILE).is_file()
        )
    return found


def _unknown_task_error(name: str, known: list[str]) -> ConfigError:
    candidates = [*TASK_GROUPS, *sorted({t.split("/")[0] for t in known}), *known]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown task {name!r}{hint}; {_valid_names_text(known)}")


def _valid_names_text(known: list[str]) -> str:
    groups = sorted({*TASK_GROUPS, *(t.split("/")[0] for t in known if "/" in t)})
    return f"valid groups: {', '.join(groups)}; valid tasks: {', '.join(known)}"
