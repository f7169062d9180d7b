"""User text must be UTF-8: checks for flags and text files, with errors that say where it is not.

Python hands over a command-line argument that is not valid UTF-8 as a `str` holding lone
surrogates (PEP 383); such text cannot be written to JSON, sent to a server or hashed into a cache
key, so it is refused before any work with the flag named. Text files are decoded strictly, and a
bad byte is reported with its file, line and byte offset instead of a `UnicodeDecodeError`
(`read_text_file`, in `backends.text_files` so that the engine layer reads key files with it).
"""

from __future__ import annotations

import argparse
import os

from backends.errors import ConfigError
from backends.text_files import read_text_file as read_text_file  # re-exported

_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # where surrogateescape puts the bytes 0x80..0xff


def check_text(value: str, where: str) -> None:
    """Raise `ConfigError` naming `where` if `value` is not valid UTF-8 text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        offset = len(value[: error.start].encode("utf-8"))
        code = ord(value[error.start])
        what = f"byte 0x{code - 0xDC00:02x}" if code in _ESCAPED_BYTES else f"U+{code:04X}"
        raise ConfigError(
            f"{where}: not valid UTF-8 text ({what} at byte offset {offset}); "
            "gpo reads text, names and paths as UTF-8"
        ) from None


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse any text or path argument that is not valid UTF-8, naming its flag."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if isinstance(item, str | os.PathLike):
                text = os.fspath(item)
                if isinstance(text, str):
                    check_text(text, "--" + name.replace("_", "-"))
