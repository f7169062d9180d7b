"""A task seen through replaced splits: the training batch of a step, or a dev/test subset.

The evaluator scores whole splits; the optimizer needs to score the 8-sample training batch of a
step, or the first N dev samples of a quick run. Wrapping the task so that `split(name)` returns
those samples lets the evaluator stay unaware of either, and keeps every other attribute (name,
answer type, metric) the task's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.sample import SPLIT_ALIASES, Sample


class TaskView:
    """`task` with the splits named in `splits` replaced by the given samples."""

    def __init__(self, task: Any, splits: Mapping[str, Sequence[Sample]]) -> None:
        self._task = task
        self._splits = {
            SPLIT_ALIASES.get(name, name): tuple(samples) for name, samples in splits.items()
        }

    def split(self, name: str) -> tuple[Sample, ...]:
        canonical = SPLIT_ALIASES.get(name, name)
        if canonical in self._splits:
            return self._splits[canonical]
        return self._task.split(name)

    @property
    def base(self) -> Any:
        return self._task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(samples)}" for name, samples in self._splits.items())
        return f"TaskView({self._task!r}, {sizes})"
