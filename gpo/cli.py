"""The `gpo` command: parses arguments and delegates to one module per subcommand.

Every subcommand module offers `add_parser(subparsers)` and `run(args) -> int`. Errors the user
can cause (`GpoError`) and files that cannot be written (a full or read-only disk) are printed as
one line naming what and where, with exit status 2; Ctrl-C exits with 130 after the subcommand has
saved its finished work. API keys are never accepted on the command line, and a key given there
by mistake is not echoed back in the usage error: a flag whose name speaks of a key, token, secret
or password (other than the `...-env` and `...-file` ones, spelled out in full) and any value that
has the shape of a well-known key format are refused before argparse sees them. No parser accepts
abbreviated flags, so `--scorer-api-key-f sk-...` cannot reach `--scorer-api-key-file`.
`--config FILE` (`gpo.config_file`) reads flags from a TOML file, checked by the same rules.

Exit status (README "Exit codes"): 0 done; 1 an unexpected error, or a server `gpo serve` started
exited; 2 bad usage or input, or an endpoint that cannot be used (one error line); 3 stopped by a
budget (`--resume` continues an optimization or a `gpo reproduce` sweep); 4 `gpo eval` finished
but samples failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from backends.errors import GpoError
from backends.redaction import has_key_prefix
from gpo import (
    cli_compare,
    cli_eval,
    cli_optimize,
    cli_report,
    cli_reproduce,
    cli_runs,
    cli_serve,
    cli_setup,
)
from gpo.config_file import CONFIG_COMMANDS, add_config_argument, install_config_file

SUBCOMMANDS = (
    cli_optimize,
    cli_eval,
    cli_report,
    cli_reproduce,
    cli_serve,
    cli_setup,
    cli_runs,
    cli_compare,
)
# A flag whose name speaks of a secret (word by word, so --budget-tokens is not one), including
# the beginnings of such names (--scorer-api, --scorer-api-k): abbreviations are not accepted.
_SECRET_FLAG = re.compile(
    r"(^|-)(api(-?k(e(y)?)?)?|apikey|token|secret|password|passwd|auth|credentials?)(-|$)"
)
# ...unless it names where the secret is kept, spelled out in full, or is the Batch API switch.
_SAFE_SECRET_FLAG = re.compile(r"-(env|file)$|^batch-api$")


def _secret_flag(argument: str) -> str | None:
    """The flag, when `argument` is a flag that would carry a secret itself."""
    if not argument.startswith("--"):
        return None
    flag = argument.split("=", 1)[0]
    name = flag[2:].lower().replace("_", "-")
    if _SECRET_FLAG.search(name) and not _SAFE_SECRET_FLAG.search(name):
        return flag
    return None


def refuse_secrets_in_argv(argv: Sequence[str]) -> None:
    """Reject `--api-key sk-...` and the like before argparse can echo the value in an error."""
    previous = ""
    for argument in argv:
        flag = _secret_flag(argument)
        named = argument.startswith("--") and "=" in argument
        if flag is None and has_key_prefix(argument.split("=", 1)[1] if named else argument):
            # Name the flag the key was given to, never the key.
            flag = argument.split("=", 1)[0] if named else previous or "a value"
        previous = argument if argument.startswith("--") and "=" not in argument else ""
        if flag is not None:
            print(
                f"gpo: error: {flag}: API keys are not accepted on the command line (they would "
                "show in the process list and shell history); put the key in an environment "
                "variable (--ROLE-api-key-env, default OPENAI_API_KEY) or a file "
                "(--ROLE-api-key-file)",
                file=sys.stderr,
            )
            raise SystemExit(2)


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """`allow_abbrev=False` on `parser` and every subparser below it."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpo",
        description="GPO prompt optimisation and fast prompt evaluation on an async engine.",
        allow_abbrev=False,
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
            if name in CONFIG_COMMANDS:
                add_config_argument(subparsers.choices[name])
    _no_abbreviations(parser)
    return parser


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed, with a `--config FILE`'s values under the command line's flags."""
    parser = build_parser()
    refuse_secrets_in_argv(argv)
    from_file = install_config_file(parser, argv, _secret_flag)
    args = parser.parse_args(argv)
    return from_file.finish(args) if from_file is not None else args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else list(argv))
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
