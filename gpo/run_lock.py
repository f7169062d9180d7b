"""One process at a time in a run directory: an OS lock on `run.lock`, naming its holder.

Two `gpo optimize` processes in one run directory (a run and a `--resume` of it, say) would both
append to the same trajectory and overwrite each other's ledger. `RunLock` takes an exclusive
`fcntl.flock` on `RUN_DIR/run.lock` for the whole session and writes there who holds it (pid,
host, start time, command). A second process is refused with a one-line error naming the holder.

The lock belongs to the open file, so the kernel drops it when its process dies, even by
SIGKILL: a lock left by a dead process is simply taken over, and its stale holder details are
overwritten with the new holder's. A clean release empties the file, so details found on taking
the lock mean the previous holder did not end cleanly (logged). flock is advisory and local to
one machine; a run directory on a network file system shared by hosts is not protected.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from backends.errors import ConfigError
from gpo.run_dir import scrub_secrets

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_COMMAND_CHARS = 300
_URL_CREDENTIALS = re.compile(r"//[^/@\s]+@")


def _command() -> str:
    """This process's `gpo ...` command line, with anything secret-looking taken out."""
    words = [_URL_CREDENTIALS.sub("//", str(word)) for word in scrub_secrets(sys.argv[1:])]
    return " ".join(["gpo", *words])[:_COMMAND_CHARS]


def _holder_details() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": _command(),
    }


def _read_details(handle: Any) -> dict[str, Any] | None:
    handle.seek(0)
    raw = handle.read()
    if not raw.strip():
        return None
    try:
        details = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return details if isinstance(details, dict) else None


def describe_holder(details: dict[str, Any] | None) -> str:
    """'pid 123 on host, since 2026-..., running `gpo optimize ...`' (or what is known)."""
    if not details:
        return "a process that has not yet written its details"
    text = f"pid {details.get('pid', '?')}"
    if details.get("host") and details["host"] != socket.gethostname():
        text += f" on {details['host']}"
    if details.get("started"):
        text += f", started {details['started']}"
    if details.get("command"):
        text += f", running `{details['command']}`"
    return text


class RunLock:
    """The exclusive lock of one run directory; `acquire` or use as a context manager."""

    def __init__(self, directory: str | os.PathLike[str], *, flag: str = "--run-dir") -> None:
        self.path = Path(directory) / LOCK_FILE
        self.directory = Path(directory)
        self.flag = flag
        self._handle: Any = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise `ConfigError` naming the process that holds it."""
        try:
            handle = open(self.path, "a+b")  # noqa: SIM115 - held until release()
        except OSError as error:
            raise ConfigError(
                f"{self.flag} {self.directory}: cannot create {LOCK_FILE}: "
                f"{error.strerror or error}"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(_read_details(handle))
            handle.close()
            raise ConfigError(
                f"{self.flag} {self.directory}: the run directory is in use by another gpo "
                f"process ({holder}); wait for it to end or stop it first"
            ) from None
        except OSError as error:
            handle.close()
            raise ConfigError(
                f"{self.flag} {self.directory}: cannot lock {LOCK_FILE}: {error.strerror or error}"
            ) from None
        stale = _read_details(handle)
        if stale is not None:
            logger.info("taking over the run lock left by %s (it did not end cleanly)", stale)
        handle.seek(0)
        handle.truncate()
        handle.write(orjson.dumps(_holder_details()) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
        self._handle = handle
        return self

    def release(self) -> None:
        """Empty the holder details and drop the lock; safe to call twice."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.flush()
        handle.close()  # closing the file drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire() if self._handle is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
