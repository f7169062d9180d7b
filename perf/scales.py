"""The benchmark's modes (full, quick, smoke): how big each workload is, how fast the simulated
clock runs, how long a contender may run before its figures are extrapolated."""

from __future__ import annotations

from dataclasses import dataclass

TASK_NAME = "bbh/navigate"
INITIAL_PROMPT = "Let's think step by step."
SAMPLES_PER_PROMPT_AT_SCALE = 40
"""W5/W6 score each prompt on the first 40 dev samples, so sizes are round numbers."""
FULL_SCALE_EXTRA_W5 = 1_000_000


@dataclass(frozen=True, slots=True)
class Scale:
    """Sizes and pacing of one benchmark mode."""

    name: str
    candidates: int
    dev_samples: int
    steps: int
    test_samples: int
    w5_sizes: tuple[int, ...]
    w6_scored_prompts: int
    time_scale: float
    api_time_scale: float
    run_budget_s: float
    zero_latency_budget_s: float
    round_cap: int
    """Most scored prompts a gather-everything pattern is measured on before extrapolating."""
    repeat: int
    in_process: bool = False


SCALES: dict[str, Scale] = {
    "full": Scale(
        "full", 8, 48, 18, 144, (1_000, 10_000, 100_000), 20_000, 4.0, 10.0, 30.0, 5.0, 4_000, 3
    ),
    "quick": Scale(
        "quick", 8, 16, 3, 24, (1_000, 4_000, 16_000), 4_000, 10.0, 20.0, 2.0, 0.3, 500, 1
    ),
    "smoke": Scale("smoke", 2, 4, 2, 4, (80, 160, 320), 160, 50.0, 50.0, 0.5, 0.3, 100, 1, True),
}
