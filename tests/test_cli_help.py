"""Every flag of `gpo optimize`, `gpo eval` and `gpo reproduce` says what it does, and a flag with
a default shows it in its help (issue 16: `--max-retries` had no help; several hid defaults)."""

from __future__ import annotations

import argparse

import pytest

from gpo.cli import build_parser

COMMANDS = ("optimize", "eval", "reproduce")
_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)


def subparser(name: str) -> argparse.ArgumentParser:
    root = build_parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def shown(value: object) -> str:
    """How a help text writes a default: 600.0 as 600."""
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_showing_its_default(command: str) -> None:
    missing, hidden = [], []
    for action in subparser(command)._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(flag)
            continue
        if action.default is None or isinstance(action, _SWITCHES):
            continue
        text = action.help
        if "default" not in text.lower() or shown(action.default) not in text:
            hidden.append(f"{flag} (default {action.default!r}): {text}")
    assert not missing, f"no help: {missing}"
    assert not hidden, "help hides the default:\n" + "\n".join(hidden)


def test_max_retries_says_what_it_retries_and_its_default() -> None:
    (action,) = [a for a in subparser("optimize")._actions if "--max-retries" in a.option_strings]
    assert action.help and "retr" in action.help and "default 8" in action.help
