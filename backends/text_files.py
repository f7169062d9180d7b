"""Reading a user's text file (a key file, a prompt list): UTF-8, strictly, with errors that name
the flag, the file and where a bad byte is, instead of a `UnicodeDecodeError`."""

from __future__ import annotations

from pathlib import Path

from backends.errors import ConfigError


def read_text_file(path: Path, flag: str, *, secret: bool = False) -> str:
    """The UTF-8 text of `path`; `ConfigError` naming `flag`, the file and where it is not.

    With `secret` (a key file) the error names the offset but not the byte itself.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot read {path}: {error.strerror or error}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        what = "a byte" if secret else f"byte 0x{raw[error.start]:02x}"
        raise ConfigError(
            f"{flag} {path}: line {line}: {what} at byte offset {error.start} is not valid "
            "UTF-8; save the file as UTF-8"
        ) from None
