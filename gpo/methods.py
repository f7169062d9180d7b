"""Methods as named configurations of one loop (GPO.md, "Baselines as configurations").

| method | direction | reflection | update | word budget |
|---|---|---|---|---|
| ape  | none                       | no  | generate | none          |
| apo  | none                       | yes | edit     | none          |
| opro | importance, k=3            | no  | generate | none          |
| pe2  | recency, k=3               | yes | generate | fixed 30      |
| sgdm | summary (problems momentum)| yes | edit     | none          |
| gpo  | relevance, k=3             | no  | generate | cosine 50->10 |

`empty` and `cot` are fixed-prompt baselines: the empty prompt and "Let's think step by step."
are scored on dev and test, with no optimization. Explicit settings override a preset, so an
ablation is the method plus the one knob it changes.
"""

from __future__ import annotations

from typing import Any

from backends.errors import ConfigError
from gpo.config import COT_PROMPT, OptimizerConfig
from gpo.schedules import WordBudgetSchedule

NO_BUDGET = WordBudgetSchedule(kind="none")

METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "gpo": {
        "direction": "relevance",
        "trajectory_k": 3,
        "reflection": False,
        "update": "generate",
        "schedule": WordBudgetSchedule(kind="cosine", initial=50, final=10),
    },
    "ape": {"direction": "none", "reflection": False, "update": "generate", "schedule": NO_BUDGET},
    "apo": {"direction": "none", "reflection": True, "update": "edit", "schedule": NO_BUDGET},
    "opro": {
        "direction": "importance",
        "trajectory_k": 3,
        "reflection": False,
        "update": "generate",
        "schedule": NO_BUDGET,
    },
    "pe2": {
        "direction": "recency",
        "trajectory_k": 3,
        "reflection": True,
        "update": "generate",
        "schedule": WordBudgetSchedule(kind="fixed", initial=30, final=30),
    },
    "sgdm": {"direction": "summary", "reflection": True, "update": "edit", "schedule": NO_BUDGET},
    "empty": {"optimize": False, "initial_prompt": ""},
    "cot": {"optimize": False, "initial_prompt": COT_PROMPT},
}
METHODS: tuple[str, ...] = tuple(METHOD_PRESETS)


def check_method(method: str) -> None:
    if method not in METHOD_PRESETS:
        raise ConfigError(
            f"unknown method {method!r} (--method); valid methods: {', '.join(METHODS)}"
        )


def config_for_method(method: str, **overrides: Any) -> OptimizerConfig:
    """The preset of `method` with `overrides` applied (None values are ignored)."""
    check_method(method)
    values: dict[str, Any] = {"method": method, **METHOD_PRESETS[method]}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return OptimizerConfig(**values)
