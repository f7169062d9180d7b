"""The optimizer's configuration: every knob of the loop, one frozen value.

A method (`gpo/methods.py`) is a named preset of these fields; every field can also be set on
its own, which is how the paper's ablations are run. Validation names the flag to fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from backends.errors import ConfigError
from engine.racing import RacingSettings
from gpo.meta_prompts import (
    POSITIONS,
    SCORE_SCALES,
    UPDATE_STYLES,
    Position,
    ScoreScale,
    UpdateStyle,
    check_choice,
)
from gpo.retrieval import RELEVANCE_ORDERS, Direction, RelevanceOrder, check_direction
from gpo.schedules import WordBudgetSchedule

COT_PROMPT = "Let's think step by step."
MAX_STEPS = 10_000
"""The most optimisation steps a run may take (the paper's runs take tens)."""

# Each numeric field's allowed range (inclusive), with the flag that sets it: the one place the
# bounds are written down; `gpo optimize` builds its argparse types from it.
LIMITS: dict[str, tuple[str, float, float]] = {
    "epochs": ("--epochs", 1, 1_000),
    "batch_size": ("--train-batch-size", 1, 100_000),
    "steps": ("--steps", 1, MAX_STEPS),
    "candidates": ("--candidates", 1, 1_000),
    "trajectory_k": ("--trajectory-k", 1, 1_000),
    "format_examples": ("--format-examples", 0, 1_000),
    "optimizer_temperature": ("--optimizer-temperature", 0.0, 10.0),
    "optimizer_max_tokens": ("--optimizer-max-tokens", 1, 1_000_000),
    "reflection_temperature": ("--reflection-temperature", 0.0, 10.0),
    "seed": ("--seed", 0, 2**32 - 1),  # numpy's RandomState takes no more
    "train_size": ("--train-size", 1, 10_000_000),
    "dev_size": ("--dev-size", 1, 10_000_000),
    "test_size": ("--test-size", 1, 10_000_000),
}


@dataclass(frozen=True, slots=True)
class OptimizerConfig:
    """Everything that decides what the optimization loop does (and nothing about endpoints)."""

    method: str = "gpo"
    initial_prompt: str = COT_PROMPT
    optimize: bool = True
    epochs: int = 3
    batch_size: int = 8
    steps: int | None = None
    candidates: int = 8
    direction: Direction = "relevance"
    trajectory_k: int = 3
    relevance_order: RelevanceOrder = "ascending"
    reflection: bool = False
    update: UpdateStyle = "generate"
    schedule: WordBudgetSchedule = field(default_factory=WordBudgetSchedule)
    format_examples: int = 3
    score_scale: ScoreScale = "percent"
    instruction_position: Position = "Q_end"
    optimizer_temperature: float = 1.0
    optimizer_max_tokens: int = 512
    reflection_temperature: float = 0.0
    seed: int = 0
    train_size: int | None = None
    dev_size: int | None = None
    test_size: int | None = None
    evaluate_test: bool = True
    test_every_step: bool = False
    racing: RacingSettings | None = None  # None: every candidate scored on every dev sample

    def __post_init__(self) -> None:
        check_direction(self.direction)
        check_choice(self.update, UPDATE_STYLES, "--update", "update style")
        check_choice(self.score_scale, SCORE_SCALES, "--score-scale", "score scale")
        check_choice(self.instruction_position, POSITIONS, "--position", "instruction position")
        check_choice(self.relevance_order, RELEVANCE_ORDERS, "--relevance-order", "order")
        for name, (flag, low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{flag} must be from {low:,} to {high:,}, got {value}")

    def replace(self, **changes: Any) -> OptimizerConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schedule"] = dataclasses.asdict(self.schedule)
        if self.racing is None:
            del data["racing"]  # a run without racing writes what it wrote before racing existed
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OptimizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown optimizer config keys: {', '.join(unknown)}")
        values = dict(data)
        if isinstance(values.get("schedule"), dict):
            values["schedule"] = WordBudgetSchedule(**values["schedule"])
        if isinstance(values.get("racing"), dict):
            values["racing"] = RacingSettings(**values["racing"])
        return cls(**values)
