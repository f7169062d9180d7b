"""`gpo optimize --racing` and its knobs: flags to `engine.racing.RacingSettings`.

Racing is off unless `--racing` is given; then each step's new candidates are raced on the dev
split (see `engine/racing.py` for the test and its guarantee) instead of each being scored on
every dev sample. delta = 0.05 (the chance, per step, that the best candidate is dropped) and
epsilon = one dev sample's worth (1 / N) were fixed before any measurement. The look-ahead
(`--racing-round`, samples scored ahead of the decisions) trades calls for a fuller window; on
the replay's tuning tasks (`perf/racing_replay.py`: bbh/navigate, bbh/web_of_lies) racing saved
40% / 37% / 34% / 29% of the chains at a look-ahead of 0 / 2 / 4 / 8. 4 keeps 32 chains of 8
candidates ready for the window.
"""

from __future__ import annotations

import argparse
from typing import Any

from backends.errors import ConfigError
from engine.racing import RacingSettings
from gpo.endpoint_flags import BoundedNumber

DEFAULTS = RacingSettings()


def add_racing_arguments(group: Any) -> None:
    """Add --racing, --racing-delta, --racing-epsilon and --racing-round to `group`."""
    group.add_argument(
        "--racing",
        action="store_true",
        help="race each step's candidates on the dev samples and stop scoring those that cannot "
        "be the best (off by default; the chosen prompt is still scored on every dev sample)",
    )
    group.add_argument(
        "--racing-delta",
        type=BoundedNumber(float, 1e-6, 0.5),
        metavar="P",
        help=f"chance per step that racing drops the best candidate (default {DEFAULTS.delta})",
    )
    group.add_argument(
        "--racing-epsilon",
        type=BoundedNumber(float, 0.0, 1.0),
        metavar="E",
        help="indifference zone on the 0-1 score scale (default: one dev sample, 1/N)",
    )
    group.add_argument(
        "--racing-round",
        type=BoundedNumber(int, 1, 100_000),
        metavar="N",
        help=f"samples scored ahead of the racing decisions (default {DEFAULTS.round_size})",
    )


def racing_from_args(args: argparse.Namespace) -> RacingSettings | None:
    """The racing settings `args` ask for, or None when racing is off."""
    if not getattr(args, "racing", False):
        for flag in ("racing_delta", "racing_epsilon", "racing_round"):
            if getattr(args, flag, None) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --racing")
        return None
    return RacingSettings(
        delta=args.racing_delta if args.racing_delta is not None else DEFAULTS.delta,
        epsilon=args.racing_epsilon,
        round_size=args.racing_round if args.racing_round is not None else DEFAULTS.round_size,
    )
