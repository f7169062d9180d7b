"""What the optimization loop needs from the layers below, and what it tells its caller.

The loop is written against these small protocols rather than concrete classes, so that the
scorer and the optimizer can be different engines (different servers), and so that tests can
drive it with small fakes. `engine.engine.Engine` and `engine.evaluator.Evaluator` satisfy them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from backends.protocol import Capabilities, Completion, Request


class EvaluationOutcome(Protocol):
    """The part of `engine.evaluator.EvaluationResult` the loop reads."""

    @property
    def mean_scores(self) -> np.ndarray: ...

    records: Any
    budget_exhausted: str | None


class ScoringEvaluator(Protocol):
    """Scores several prompts on one split of a task in one call."""

    async def evaluate(
        self,
        task: Any,
        prompts: Sequence[str],
        split: str = "eval",
        *,
        limit: int | None = None,
        on_record: Callable[[Any], None] | None = None,
    ) -> EvaluationOutcome: ...


class GenerationEngine(Protocol):
    """The optimizer model's engine: answers requests, knows whether `n > 1` works."""

    capabilities: Capabilities

    async def generate(self, request: Request, *, priority: int, phase: str) -> Completion: ...

    async def generate_many(
        self, requests: Iterable[Request], *, priority: int, phase: str
    ) -> list[Any]: ...


class ProgressListener(Protocol):
    """Told about progress; the CLI draws it, tests count it. Every method may be a no-op."""

    def task_started(self, task: str, total_steps: int) -> None: ...

    def step_finished(self, task: str, step: int, total_steps: int, best_dev: float) -> None: ...

    def task_finished(self, task: str, result: Any) -> None: ...


class SilentProgress:
    """A listener that ignores everything."""

    def task_started(self, task: str, total_steps: int) -> None:
        return None

    def step_finished(self, task: str, step: int, total_steps: int, best_dev: float) -> None:
        return None

    def task_finished(self, task: str, result: Any) -> None:
        return None
