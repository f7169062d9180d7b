"""How answers are scored: the `--answer-rules` and `--rouge-package` flags of `gpo eval` and
`gpo optimize`, and the value a run carries and records in its config.

`reference` (the default) scores with the reference implementation's rules, quirks included;
`lenient` with the project's looser parsers (docs/fidelity.md lists every difference, with an
example). ROUGE-L (WebNLG) comes from the reference's `rouge` package by default, or from
`rouge_score` (stemmed, lowercased).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from benchmarks.task import ANSWER_RULES, ROUGE_PACKAGES, AnswerRules, RougePackage


@dataclass(frozen=True, slots=True)
class ScoringRules:
    """The answer rules and the ROUGE package every task of a run is loaded with."""

    answer_rules: AnswerRules = "reference"
    rouge_package: RougePackage = "rouge"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScoringRules:
        return cls(
            getattr(args, "answer_rules", "reference"), getattr(args, "rouge_package", "rouge")
        )

    def task_options(self) -> dict[str, Any]:
        """Keyword arguments of `benchmarks.load_task`."""
        return {"answer_rules": self.answer_rules, "rouge_package": self.rouge_package}

    def to_json(self) -> dict[str, str]:
        return {"answer_rules": self.answer_rules, "rouge_package": self.rouge_package}


def add_scoring_rule_arguments(parser: Any) -> None:
    """Add --answer-rules and --rouge-package to `parser` (a parser or an argument group)."""
    parser.add_argument(
        "--answer-rules",
        choices=ANSWER_RULES,
        default="reference",
        help="how answers are parsed and compared: the reference implementation's rules "
        "(default) or the project's lenient ones (docs/fidelity.md lists the differences)",
    )
    parser.add_argument(
        "--rouge-package",
        choices=ROUGE_PACKAGES,
        default="rouge",
        help="ROUGE-L for WebNLG: 'rouge' 1.0.1 as the reference (default; case-sensitive, no "
        "stemming) or 'rouge_score' (stemmed, lowercased)",
    )
