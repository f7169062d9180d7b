"""The `gpo` command: parses arguments and delegates to one module per subcommand.

Every subcommand module offers `add_parser(subparsers)` and `run(args) -> int`. Errors the user
can cause (`GpoError`) are printed as one line naming what and where, with exit status 2; Ctrl-C
exits with 130 after the subcommand has saved its finished work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from backends.errors import GpoError
from gpo import cli_eval, cli_optimize, cli_report, cli_serve, cli_setup

SUBCOMMANDS = (cli_optimize, cli_eval, cli_report, cli_serve, cli_setup)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpo",
        description="GPO prompt optimisation and fast prompt evaluation on an async engine.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity on stderr (default WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        for name in set(subparsers.choices) - before:
            subparsers.choices[name].set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except GpoError as error:
        print(f"gpo {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpo {args.command}: interrupted; finished work is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
