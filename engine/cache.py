"""Persistent response cache: SQLite in WAL mode, orjson payloads, one row per answered request.

Answers are committed as each HTTP call returns (one transaction per call), before the waiting
callers see them, so a killed run keeps every answer it was given. WAL lets several processes read
while one writes; `busy_timeout` makes a writer wait for the lock instead of failing with
"database is locked". A file that SQLite cannot read is moved aside (never deleted) and a fresh
cache is started, so one bad file never stops a run.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from backends.errors import ConfigError
from backends.protocol import Completion

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,
    payload BLOB NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""
_BUSY_TIMEOUT_MS = 60_000


def encode_completion(completion: Completion) -> bytes:
    return orjson.dumps(
        (
            completion.texts,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.finish_reasons,
        )
    )


def decode_completion(payload: bytes) -> Completion:
    texts, prompt_tokens, completion_tokens, reasons = orjson.loads(payload)
    return Completion(tuple(texts), prompt_tokens, completion_tokens, tuple(reasons), cached=True)


class ResponseCache:
    """Request key -> `Completion`, in one SQLite file shared safely between processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.set_aside: Path | None = None
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create the cache folder {self.path.parent}: {error}"
            ) from None
        self._connection = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                raise
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            logger.warning(
                "cache %s is unreadable (%s); moved it to %s and started a new one",
                self.path,
                error,
                self.set_aside,
            )
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.replace(Path(f"{self.set_aside}{suffix}"))
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as error:
            raise ConfigError(f"cannot open the cache file {self.path}: {error}") from None
        try:
            connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
            connection.execute("SELECT key FROM responses LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return connection

    def get(self, key: bytes) -> Completion | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT payload FROM responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        try:
            return decode_completion(row[0])
        except (orjson.JSONDecodeError, ValueError, TypeError):
            logger.warning("cache entry in %s is damaged; it will be fetched again", self.path)
            return None

    def put_many(self, entries: Iterable[tuple[bytes, Completion]]) -> None:
        """Commit answers in one transaction. The first writer of a key wins; later ones are
        ignored, so two processes racing on the same request never disagree."""
        rows = [(key, encode_completion(c), time.time()) for key, c in entries]
        if not rows:
            return
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
                    "INSERT OR IGNORE INTO responses (key, payload, created) VALUES (?, ?, ?)", rows
                )
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()
