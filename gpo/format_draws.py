"""The format examples of a multi-task run, drawn as the reference draws them.

The reference seeds numpy once per run and then, task after task in the run's order, draws a
permutation of the train, eval and test splits and the format examples' indices (3 without
replacement, sorted): the generator's state carries from one task to the next, so the second
task's examples depend on the first task's split sizes. Replaying that sequence gives every task
of a run the examples the reference would have shown the optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def draw_run_format_indices(seed: int, tasks: Sequence[Any], count: int) -> dict[str, list[int]]:
    """Each task's format-example indices (by task name), one generator carried across `tasks`."""
    rng = np.random.RandomState(seed)
    drawn: dict[str, list[int]] = {}
    for task in tasks:
        for split in ("train", "eval", "test"):
            size = len(task.split(split))
            if size:
                rng.choice(size, size=size, replace=False)
        format_size = len(task.split("format"))
        if not format_size:
            drawn[task.name] = []
            continue
        chosen = rng.choice(format_size, size=min(count, format_size), replace=False)
        drawn[task.name] = sorted(int(i) for i in chosen)
    return drawn
