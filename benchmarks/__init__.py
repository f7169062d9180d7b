"""The paper's benchmarks as pure functions and values: data, layout, answer parsing, metrics.

Nothing here touches the network (except `download`, which fetches public datasets on request);
everything else reads data files and computes. The engine and the optimizer import from here:

    task = load_task("bbh/navigate")
    samples = task.split("eval")
    content = build_prompt("Let's think step by step.", samples[0], PromptLayout())
    follow_up = answer_turn(task, samples[0])
    score = score_answer(task, samples[0], model_text)
"""

from __future__ import annotations

from benchmarks.aggregate import aggregate
from benchmarks.answer_turn import answer_turn
from benchmarks.answer_types import AnswerType, BooleanVocabulary, Metric
from benchmarks.data_dir import DATA_DIR_ENV, resolve_data_dir
from benchmarks.download import download
from benchmarks.layout import PromptLayout, build_prompt
from benchmarks.metrics import extract_answer, score_answer
from benchmarks.mmlu_categories import MMLU_CATEGORIES, MMLU_CATEGORY_NAMES
from benchmarks.reference_prompts import load_reference_prompts
from benchmarks.sample import SPLITS, Sample
from benchmarks.task import Task
from benchmarks.task_registry import (
    TASK_GROUPS,
    list_task_names,
    load_task,
    resolve_task_names,
)

__all__ = [
    "DATA_DIR_ENV",
    "MMLU_CATEGORIES",
    "MMLU_CATEGORY_NAMES",
    "SPLITS",
    "TASK_GROUPS",
    "AnswerType",
    "BooleanVocabulary",
    "Metric",
    "PromptLayout",
    "Sample",
    "Task",
    "aggregate",
    "answer_turn",
    "build_prompt",
    "download",
    "extract_answer",
    "list_task_names",
    "load_reference_prompts",
    "load_task",
    "resolve_data_dir",
    "resolve_task_names",
    "score_answer",
]
