"""What optimizing one task produced: the value the loop returns and `result.json` holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gpo.trajectory import TrajectoryEntry

TaskStatus = Literal["finished", "stopped"]


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one task.

    `status` is "stopped" when a budget ran out: the result then holds the best prompt found so
    far, and test scores that could not be paid for are None. Scores are fractions in [0, 1].
    `word_budgets[i]` is the budget shown at step i; `test_by_step` holds the test score of each
    step's prompt when that option is on.
    """

    task: str
    method: str
    status: TaskStatus
    stop_reason: str | None
    initial_prompt: str
    initial_dev: float | None
    initial_test: float | None
    final_prompt: str
    final_step: int
    final_dev: float | None
    final_test: float | None
    steps_done: int
    steps_total: int
    trajectory: tuple[TrajectoryEntry, ...] = ()
    word_budgets: tuple[int | None, ...] = ()
    test_by_step: tuple[tuple[int, float], ...] = ()
    wall_time_s: float = 0.0
    # With --racing: per step, the chains scored and the chains a full evaluation would score.
    racing_steps: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "method": self.method,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "initial_prompt": self.initial_prompt,
            "initial_dev": self.initial_dev,
            "initial_test": self.initial_test,
            "final_prompt": self.final_prompt,
            "final_step": self.final_step,
            "final_dev": self.final_dev,
            "final_test": self.final_test,
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "trajectory": [
                {"step": e.step, "prompt": e.prompt, "dev_score": e.dev_score}
                for e in self.trajectory
            ],
            "word_budgets": list(self.word_budgets),
            "test_by_step": [[step, score] for step, score in self.test_by_step],
            "wall_time_s": round(self.wall_time_s, 3),
            # Written only with racing on, so a run without it writes what it always wrote.
            **({"racing": list(self.racing_steps)} if self.racing_steps else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        return cls(
            task=data["task"],
            method=data["method"],
            status=data["status"],
            stop_reason=data.get("stop_reason"),
            initial_prompt=data["initial_prompt"],
            initial_dev=data.get("initial_dev"),
            initial_test=data.get("initial_test"),
            final_prompt=data["final_prompt"],
            final_step=data["final_step"],
            final_dev=data.get("final_dev"),
            final_test=data.get("final_test"),
            steps_done=data["steps_done"],
            steps_total=data["steps_total"],
            trajectory=tuple(
                TrajectoryEntry(e["step"], e["prompt"], e["dev_score"])
                for e in data.get("trajectory", [])
            ),
            word_budgets=tuple(data.get("word_budgets", [])),
            test_by_step=tuple((int(s), float(v)) for s, v in data.get("test_by_step", [])),
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            racing_steps=tuple(data.get("racing", ())),
        )
