"""Word-budget schedules: GPO's analogue of a learning-rate schedule.

The meta-prompt tells the optimizer "You are allowed to change up to N words in the current
prompt"; N is the word budget (the paper's edit distance) and decays over the steps like a
learning rate. With `cur` = the trajectory length (step + 1) and `total` = the number of steps:

- none:   no budget sentence at all.
- fixed:  N = initial.
- linear: N = int(initial - (initial - final) / (total - warmup) * cur).
- cosine: N = int(final + (initial - final) * 0.5 * (1 + cos(pi * cur / total))).

With a warm-up of `w` steps, N = int(initial * cur / w) while cur < w; after it, linear decays as
int(initial - rate * (cur - w)) and cosine replaces cur / total with (cur - w) / (total - w).
These are the reference implementation's formulas, truncation by `int` included, so cosine
50 -> 10 over 18 steps gives 49 48 47 45 42 40 36 33 30 26 23 20 17 14 12 11 10 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from backends.errors import ConfigError

ScheduleKind = Literal["none", "fixed", "linear", "cosine"]
SCHEDULE_KINDS: tuple[str, ...] = ("none", "fixed", "linear", "cosine")


@dataclass(frozen=True, slots=True)
class WordBudgetSchedule:
    """How many words the optimizer may change at each step."""

    kind: ScheduleKind = "cosine"
    initial: int = 50
    final: int = 10
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(
                f"unknown word-budget schedule {self.kind!r} (--schedule); "
                f"valid schedules: {', '.join(SCHEDULE_KINDS)}"
            )
        if self.initial < 1 or self.final < 0:
            raise ConfigError(
                f"word budget needs initial >= 1 and final >= 0 "
                f"(--words-initial {self.initial}, --words-final {self.final})"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")

    def budget(self, cur: int, total: int) -> int | None:
        """The word budget when the trajectory holds `cur` entries, or None for no budget."""
        if self.kind == "none":
            return None
        if total < 1:
            raise ConfigError(f"a word-budget schedule needs at least one step, got {total}")
        warmup = self.warmup_steps
        if warmup and cur < warmup:
            return int(self.initial * cur / warmup)
        if self.kind == "fixed":
            return self.initial
        if warmup and warmup >= total:
            raise ConfigError(
                f"--warmup-steps ({warmup}) must be smaller than the number of steps ({total})"
            )
        if self.kind == "linear":
            rate = (self.initial - self.final) / (total - warmup)
            return int(self.initial - rate * (cur - warmup))
        progress = (cur - warmup) / (total - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return int(self.final + (self.initial - self.final) * cosine)

    def sequence(self, total: int) -> list[int | None]:
        """Budgets for every step of a run of `total` steps (cur = 1 .. total)."""
        return [self.budget(cur, total) for cur in range(1, total + 1)]

    def describe(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "fixed":
            text = f"fixed {self.initial}"
        else:
            text = f"{self.kind} {self.initial} -> {self.final}"
        return f"{text}, warm-up {self.warmup_steps}" if self.warmup_steps else text
