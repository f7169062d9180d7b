"""The scoring flags `gpo eval` and `gpo optimize` share, and the evaluator settings they make.

How a task's prompt is laid out and how long the scorer may answer are one decision for both
commands: where the instruction goes (`--position`), Q:/A: markers, chat or plain completion,
k-shot demonstrations, and the max new tokens of the first turn and of the answer-pinning turn.
"""

from __future__ import annotations

import argparse
from typing import Any

from backends.protocol import SamplingParams
from benchmarks import PromptLayout
from benchmarks.layout import POSITIONS
from engine.evaluator import EvaluatorSettings
from gpo.endpoint_flags import MAX_TOKENS, BoundedNumber
from gpo.scoring_rules import add_scoring_rule_arguments

MAX_SHOTS = 1_000


def add_scoring_arguments(group: Any) -> None:
    """Add the scoring flags to a parser or an argument group."""
    group.add_argument(
        "--position",
        choices=POSITIONS,
        default="Q_end",
        help="where the instruction goes (default Q_end)",
    )
    group.add_argument("--qa-markers", action="store_true", help="write Q:/A: markers")
    group.add_argument(
        "--completion",
        action="store_true",
        help="plain completion scorer (no chat turns, parsed from one answer)",
    )
    group.add_argument(
        "--shots",
        type=BoundedNumber(int, 0, MAX_SHOTS),
        default=0,
        metavar="K",
        help="k-shot demonstrations (default 0)",
    )
    group.add_argument(
        "--max-tokens",
        type=BoundedNumber(int, 1, MAX_TOKENS),
        default=256,
        metavar="N",
        help="first-turn max new tokens (default 256)",
    )
    group.add_argument(
        "--follow-up-max-tokens",
        type=BoundedNumber(int, 1, MAX_TOKENS),
        default=100,
        metavar="N",
        help="answer-pinning turn max new tokens (default 100)",
    )
    add_scoring_rule_arguments(group)


def scoring_settings(args: argparse.Namespace) -> EvaluatorSettings:
    """The evaluator settings the scoring flags in `args` ask for."""
    return EvaluatorSettings(
        layout=PromptLayout(args.position, args.qa_markers, not args.completion, args.shots),
        first_turn=SamplingParams(max_tokens=args.max_tokens),
        follow_up=SamplingParams(max_tokens=args.follow_up_max_tokens),
    )
