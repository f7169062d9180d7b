"""Reading and editing a server's command line: `--flag value` options, and secret values hidden.

Managed servers are launched from argv lists that users may extend with their own flags; these
helpers find a flag's value (`--flag value` and `--flag=value` alike, `_` and `-` the same),
remove flags before the launcher sets them itself, and redact the values of secret-looking
flags (`--api-key`, `--token`...) before a command line reaches a log or an error message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_SECRET_FLAG_WORDS = ("key", "token", "secret", "password")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with the values of secret-looking flags (`--api-key X`, `--token=X`) hidden."""
    redacted: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            redacted.append("[redacted]")
            hide_next = False
            continue
        if arg.startswith("-"):
            flag, has_value, _ = arg.partition("=")
            is_secret = any(word in flag.lower() for word in _SECRET_FLAG_WORDS)
            if is_secret and has_value:
                redacted.append(f"{flag}=[redacted]")
                continue
            hide_next = is_secret and not has_value
        redacted.append(arg)
    return redacted


def _options(argv: Sequence[str]) -> dict[str, Any]:
    """Flags of a `--flag value` / `--flag=value` command line, for tests and callers alike."""
    found: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            flag, has_value, value = arg.partition("=")
            if has_value:
                found[flag] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                found[flag] = argv[i + 1]
                i += 1
            else:
                found[flag] = True
        i += 1
    return found


def option_value(argv: Sequence[str], *names: str) -> str | None:
    """The value given to any of the flags `names` in `argv` (last one wins), or None.

    Both `--flag value` and `--flag=value` are understood; `_` and `-` in flag names are the same.
    """
    wanted = {name.replace("_", "-") for name in names}
    value: str | None = None
    for flag, given in _options(argv).items():
        if flag.replace("_", "-") in wanted and isinstance(given, str):
            value = given
    return value


def remove_options(argv: Sequence[str], *names: str) -> list[str]:
    """`argv` without the flags `names` and their values (`--flag value` or `--flag=value`)."""
    wanted = {name.replace("_", "-") for name in names}
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            if not arg.startswith("--"):
                continue
        flag, has_value, _ = arg.partition("=")
        if arg.startswith("--") and flag.replace("_", "-") in wanted:
            skip_value = not has_value
            continue
        kept.append(arg)
    return kept
