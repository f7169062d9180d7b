"""The `gpo` command: parses arguments and delegates to one module per subcommand.

Every subcommand module offers `add_parser(subparsers)` and `run(args) -> int`. Errors the user
can cause (`GpoError`) and files that cannot be written (a full or read-only disk) are printed as
one line naming what and where, with exit status 2; Ctrl-C exits with 130 after the subcommand has
saved its finished work. API keys are never accepted on the command line, and a key given there
by mistake is not echoed back in the usage error.

Exit status (README "Exit codes"): 0 done; 1 an unexpected error, or a server `gpo serve` started
exited; 2 bad usage or input, or an endpoint that cannot be used (one error line); 3 stopped by a
budget (`--resume` continues an optimization); 4 `gpo eval` finished but samples failed; 130
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from backends.errors import GpoError
from gpo import cli_eval, cli_optimize, cli_report, cli_serve, cli_setup

SUBCOMMANDS = (cli_optimize, cli_eval, cli_report, cli_serve, cli_setup)
# A flag that looks like it carries a secret itself (not the name of a variable or file holding it).
_SECRET_FLAG = re.compile(r"^--[\w-]*(api[-_]?key|token|secret|password)(=.*)?$", re.IGNORECASE)
_SAFE_SECRET_FLAG = re.compile(r"(-env|-file)(=.*)?$")


def refuse_secrets_in_argv(argv: Sequence[str]) -> None:
    """Reject `--api-key sk-...` and the like before argparse can echo the value in an error."""
    for argument in argv:
        if _SECRET_FLAG.match(argument) and not _SAFE_SECRET_FLAG.search(argument):
            flag = argument.split("=", 1)[0]
            print(
                f"gpo: error: {flag}: API keys are not accepted on the command line (they would "
                "show in the process list and shell history); put the key in an environment "
                "variable (--ROLE-api-key-env, default OPENAI_API_KEY) or a file "
                "(--ROLE-api-key-file)",
                file=sys.stderr,
            )
            raise SystemExit(2)


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
    refuse_secrets_in_argv(sys.argv[1:] if argv is None else argv)
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
    except OSError as error:  # a full or read-only disk met mid-run
        where = f"{error.filename}: " if error.filename else ""
        print(
            f"gpo {args.command}: error: cannot write {where}{error.strerror or error}; "
            "work finished before this is saved",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"gpo {args.command}: interrupted; finished work is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
