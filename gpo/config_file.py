"""`--config FILE`: a TOML file of flags for `gpo optimize`, `gpo eval` and `gpo reproduce`.

Each key is a flag's long name without the dashes, written with dashes or underscores
(`scorer-url`, `train_batch_size`); values are TOML strings or numbers for valued flags, `true` /
`false` for switches (`no-test = true`, `reflection = false` for `--no-reflection`), and arrays
for repeatable flags (`task = ["bbh/navigate", "gsm8k"]`). For example:

    task = ["bbh/navigate"]
    steps = 4
    scorer-url = ["http://127.0.0.1:8000/v1"]
    budget-usd = 2.5

Every value goes through the flag's own argparse type, choices and action (bounds, a key file
that must exist, a variable name that must be one), so a file is checked exactly as the command
line is; the file's values become the parser's defaults, so a flag given on the command line wins
(a repeatable flag given there replaces the file's list rather than adding to it). A bad file is
one line naming the file, the key and its line, with exit status 2: an unknown key, a value of the
wrong type or out of range, a file that is not UTF-8 or not TOML. API keys are refused as on the
command line (`gpo.cli.refuse_secrets_in_argv`): a key whose name speaks of a secret, or a value
shaped like a key, is an error that never shows the value; keys only come from
`--ROLE-api-key-env` or `--ROLE-api-key-file`.

The file's path is kept in the parsed arguments (`config`), so a run's config.json records it next
to the effective values. `gpo optimize --resume RUN --config FILE` treats the file's values as
flags given now: operational ones may change, the rest must match the run's.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from backends.redaction import has_key_prefix

CONFIG_COMMANDS = ("optimize", "eval", "reproduce")
_NOT_CONFIGURABLE = (argparse._HelpAction, argparse._VersionAction)


class ConfigFileError(Exception):
    """A bad config file; the message names the file, the key and where it can."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--config FILE` to a subcommand's parser."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of flags (keys are the flags' long names: steps = 4, "
        'scorer-url = ["http://..."]); flags given on the command line win',
    )


def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every long flag's action by its name without the leading dashes (`no-x` too, for
    `--x/--no-x`), except help and `--config` itself."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, _NOT_CONFIGURABLE) or action.dest == "config":
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                actions[option[2:]] = action
    return actions


class _RaisingParser:
    """Stands in for the parser in a custom action's `__call__`: its error raises."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._parser = parser

    def error(self, message: str) -> NoReturn:
        raise ConfigFileError(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def _key_line(text: str, key: str) -> str:
    """`line N: ` where `key` is assigned in `text`, or '' when it cannot be told."""
    spelled = "|".join(re.escape(k) for k in {key, key.replace("-", "_"), key.replace("_", "-")})
    pattern = re.compile(rf"^\s*[\"']?(?:{spelled})[\"']?\s*=", re.MULTILINE)
    match = pattern.search(text)
    return f"line {text.count(chr(10), 0, match.start()) + 1}: " if match else ""


SecretFlagRule = Callable[[str], "str | None"]
"""The command line's rule (`gpo.cli`): the flag, when an argument is a flag carrying a secret."""


def _refuse_secret(key: str, value: Any, secret_flag: SecretFlagRule) -> None:
    """A key named like a secret, or a value shaped like an API key: refused, never shown."""
    values = value if isinstance(value, list) else [value]
    if secret_flag(f"--{key}") or any(isinstance(v, str) and has_key_prefix(v) for v in values):
        raise ConfigFileError(
            "API keys are not accepted in a config file (it would be copied, shared and "
            "recorded with the run); put the key in an environment variable "
            "(--ROLE-api-key-env, default OPENAI_API_KEY) or a file (--ROLE-api-key-file)"
        )


def _switch(action: argparse.Action, name: str, value: Any) -> Any:
    """The value a switch (`--x`, `--no-x`, `--x/--no-x`) takes from a TOML boolean."""
    if not isinstance(value, bool):
        raise ConfigFileError(f"expected true or false, got {_toml_type(value)}")
    if isinstance(action, argparse.BooleanOptionalAction):
        return value != name.startswith("no-")
    return action.const if value else action.default


def _token(action: argparse.Action, value: Any) -> str:
    """One TOML scalar as the text the flag's type reads; refuses what no flag value can be."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigFileError(f"expected a string or a number, got {_toml_type(value)}")
    if not isinstance(value, str) and action.type in (None, Path):
        raise ConfigFileError(f"expected a string, got {_toml_type(value)}")
    return str(value)


def _toml_type(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    kinds.update({list: "an array", dict: "a table"})
    return kinds.get(type(value), f"a {type(value).__name__}")


def _convert(
    parser: argparse.ArgumentParser, action: argparse.Action, name: str, value: Any
) -> Any:
    """The value of `--name` read from TOML, through the flag's own type, choices and action."""
    if action.nargs == 0:
        return _switch(action, name, value)
    repeatable = isinstance(action, argparse._AppendAction)
    if isinstance(value, list) and not repeatable:
        raise ConfigFileError("expected one value, got an array (the flag is not repeatable)")
    items = value if isinstance(value, list) else [value]
    namespace = argparse.Namespace(**{action.dest: [] if repeatable else None})
    option = f"--{name}"
    for item in items:
        try:
            converted = parser._get_values(action, [_token(action, item)])
        except argparse.ArgumentError as error:
            raise ConfigFileError(error.message) from None
        action(_RaisingParser(parser), namespace, converted, option)  # type: ignore[arg-type]
    return getattr(namespace, action.dest)


def read_config(
    path: Path, parser: argparse.ArgumentParser, secret_flag: SecretFlagRule
) -> dict[str, Any]:
    """The parsed arguments `path` gives, by destination; ConfigFileError names what is wrong."""
    try:
        data = path.expanduser().read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigFileError(f"{path}: line {line}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(f"{path}: not valid TOML: {error}") from None
    actions = _flag_actions(parser)
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("_", "-")
        where = f"{path}: {_key_line(text, key)}key {key!r}"
        try:
            _refuse_secret(name, value, secret_flag)
            if name not in actions:
                close = difflib.get_close_matches(name, list(actions), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigFileError(f"unknown key{hint}; keys are the flags of {parser.prog}")
            action = actions[name]
            if action.dest in values:
                raise ConfigFileError(f"{action.dest!r} is set twice in this file")
            values[action.dest] = _convert(parser, action, name, value)
        except ConfigFileError as error:
            raise ConfigFileError(f"{where}: {error}") from None
    return values


def _subcommand(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[str, int] | None:
    """The subcommand `argv` runs and its position, when it is one that takes --config."""
    skip = False
    for index, argument in enumerate(argv):
        if skip:
            skip = False
            continue
        if argument == "--log-level":
            skip = True
        elif not argument.startswith("-"):
            return (argument, index) if argument in CONFIG_COMMANDS else None
    return None


def _config_path(argv: Sequence[str]) -> str | None:
    """The last `--config FILE` (or `--config=FILE`) in `argv`."""
    found = None
    for index, argument in enumerate(argv):
        if argument == "--config" and index + 1 < len(argv):
            found = argv[index + 1]
        elif argument.startswith("--config="):
            found = argument.split("=", 1)[1]
    return found


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise LookupError(command)


class ConfigDefaults:
    """A config file's values installed as a subcommand's defaults, and the repair after parsing
    that lets a repeatable flag given on the command line replace the file's list."""

    def __init__(self, values: dict[str, Any], path: str) -> None:
        self.values = values
        self.path = path

    def finish(self, args: argparse.Namespace) -> argparse.Namespace:
        """`args` with the command line's repeatable flags replacing, not extending, the file's."""
        for dest, value in self.values.items():
            now = getattr(args, dest, None)
            if isinstance(value, list) and now is not value and isinstance(now, list):
                setattr(args, dest, now[len(value) :])
        return args


def install_config_file(
    parser: argparse.ArgumentParser, argv: Sequence[str], secret_flag: SecretFlagRule
) -> ConfigDefaults | None:
    """Read the `--config` file `argv` names, if any, into its subcommand's defaults. A bad file
    is one error line and exit status 2. `secret_flag` is the command line's rule for flags that
    would carry a secret (`gpo.cli`), applied to the file's keys."""
    found = _subcommand(parser, argv)
    path = _config_path(argv[found[1] + 1 :]) if found else None
    if found is None or path is None:
        return None
    sub = _subparser(parser, found[0])
    try:
        values = read_config(Path(path), sub, secret_flag)
    except ConfigFileError as error:
        print(f"gpo {found[0]}: error: --config {error}", file=sys.stderr)
        raise SystemExit(2) from None
    sub.set_defaults(**values)
    return ConfigDefaults(values, path)
