"""The optimization trajectory: the prompt chosen at each step with its dev score.

It starts with the initial prompt (step -1) and gains one entry per step. The trajectory is the
analogue of momentum: the retrieval selectors choose which entries the meta-prompt shows. Scores
are kept as fractions in [0, 1]; how they are printed is the meta-prompt's business.

Files keep this numbering; what users see (reports, plots, logs) is `shown_step`: the initial
prompt is step 0 and step k is the prompt after k optimisation steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

INITIAL_STEP = -1


def shown_step(step: int) -> int:
    """The step number users see for trajectory step `step`: the initial prompt is step 0."""
    return step - INITIAL_STEP


@dataclass(frozen=True, slots=True)
class TrajectoryEntry:
    """One point of the trajectory: `step` is -1 for the initial prompt, then 0, 1, ..."""

    step: int
    prompt: str
    dev_score: float


class Trajectory:
    """An append-only list of entries with the queries the loop needs."""

    def __init__(self, entries: list[TrajectoryEntry] | None = None) -> None:
        self._entries: list[TrajectoryEntry] = list(entries or [])

    def append(self, entry: TrajectoryEntry) -> None:
        self._entries.append(entry)

    @property
    def entries(self) -> tuple[TrajectoryEntry, ...]:
        return tuple(self._entries)

    @property
    def current(self) -> TrajectoryEntry:
        if not self._entries:
            raise IndexError("the trajectory is empty")
        return self._entries[-1]

    def best(self) -> TrajectoryEntry:
        """The entry with the highest dev score; the earliest wins a tie."""
        if not self._entries:
            raise IndexError("the trajectory is empty")
        return max(self._entries, key=lambda entry: entry.dev_score)

    def chosen_prompts(self) -> set[str]:
        return {entry.prompt for entry in self._entries}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TrajectoryEntry]:
        return iter(self._entries)
