"""Per-benchmark means of per-task scores, as the paper reports them.

BBH and MMLU are the unweighted mean over their subtasks (not over samples); MMLU is also
reported per category (`mmlu:STEM`, `mmlu:Humanities`, `mmlu:Social Sciences`, `mmlu:Other`);
`lite-bbh` is the mean over the paper's four ablation tasks when all four are present. A single
task (gsm8k, wsc, webnlg) is its own group. Scores keep their scale (0-1 in, 0-1 out).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from statistics import fmean

from benchmarks.mmlu_categories import MMLU_CATEGORIES, MMLU_CATEGORY_NAMES
from benchmarks.task_registry import LITE_BBH


def aggregate(scores_by_task: Mapping[str, float]) -> dict[str, float]:
    """Group means keyed by group name ("bbh", "mmlu", "mmlu:STEM", "lite-bbh", "gsm8k", ...)."""
    members: dict[str, list[float]] = defaultdict(list)
    for task, score in scores_by_task.items():
        group, _, subtask = task.partition("/")
        members[group].append(score)
        if group == "mmlu" and subtask in MMLU_CATEGORIES:
            members[f"mmlu:{MMLU_CATEGORIES[subtask]}"].append(score)
    result = {group: fmean(scores) for group, scores in members.items()}
    if all(task in scores_by_task for task in LITE_BBH):
        result["lite-bbh"] = fmean(scores_by_task[task] for task in LITE_BBH)
    order = ["bbh", "lite-bbh", "mmlu", *(f"mmlu:{c}" for c in MMLU_CATEGORY_NAMES)]
    ranked = [key for key in order if key in result]
    ranked += sorted(key for key in result if key not in order)
    return {key: result[key] for key in ranked}
