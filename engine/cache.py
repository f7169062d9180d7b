"""Persistent response cache: SQLite in WAL mode, orjson payloads, one row per answered request,
plus claims that let several processes share one cache file without paying twice for an answer.

Answers are committed as each HTTP call returns (one transaction per call), before the waiting
callers see them, so a killed run keeps every answer it was given. WAL lets several processes read
while one writes; `busy_timeout` makes a writer wait for the lock instead of failing with
"database is locked" (opening a fresh file, which several processes may do at once, is retried
the same way). A path that holds something else (a text file, another program's SQLite
database) is refused with `ConfigError` and left untouched. A cache file that SQLite cannot read
(a SQLite header, then damage) is moved aside (never deleted) and a fresh cache is started, so
one bad cache never stops a run; damage found later is logged and read as a miss.

Cross-process in-flight de-duplication (claims). Before a process sends a call, it claims the
call's keys in one transaction (`claim_many`): a key already answered comes back with its
answer; a key with a *live* claim of another owner is reported as claimed elsewhere, and the
caller waits for that answer (`poll_claims`, with backoff) instead of sending it again; every
other key becomes the caller's claim (key, owner, expiry; the owner's host, pid and process
start time are written once per cache object). A claim is live while it has not expired and, on
this host, its process still exists (same pid and start time), so the claims of a killed
process are ignored at once and those of a stuck one after their expiry. Storing answers
(`put_many`) drops the writer's claims on them in the same transaction; `release_many` drops
claims of requests that finally failed; `close` drops the rest. Claims are renewed by claiming
the same keys again (each retry of a call does), so a claim lives `ttl_s` past its latest
attempt. A claim costs about 0.2 ms per call of 32 requests (one small write transaction).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from backends.errors import ConfigError
from backends.protocol import Completion

logger = logging.getLogger(__name__)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS responses (
        key BLOB PRIMARY KEY,
        payload BLOB NOT NULL,
        created REAL NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS inflight_claims (
        key BLOB PRIMARY KEY,
        owner TEXT NOT NULL,
        expires REAL NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS claim_owners (
        owner TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_started INTEGER,
        opened REAL NOT NULL
    ) WITHOUT ROWID
    """,
)
_SQLITE_HEADER = b"SQLite format 3\x00"
_OUR_TABLES = frozenset({"responses", "inflight_claims", "claim_owners"})
_BUSY_TIMEOUT_MS = 60_000
_OPEN_ATTEMPTS_S = 60.0
# Keys per SQL statement: below SQLite's oldest limit on bound variables (999).
_KEYS_PER_STATEMENT = 500
DEFAULT_CLAIM_TTL_S = 900.0


def encode_completion(completion: Completion) -> bytes:
    return orjson.dumps(
        (
            completion.texts,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.finish_reasons,
            completion.cached_prompt_tokens,
            completion.reasoning_tokens,
        )
    )


def decode_completion(payload: bytes) -> Completion:
    # Entries written before cached and reasoning tokens were kept have four fields.
    texts, prompt_tokens, completion_tokens, reasons, *details = orjson.loads(payload)
    cached_prompt, reasoning = [*details, 0, 0][:2]
    return Completion(
        tuple(texts),
        prompt_tokens,
        completion_tokens,
        tuple(reasons),
        cached=True,
        cached_prompt_tokens=cached_prompt,
        reasoning_tokens=reasoning,
    )


def _process_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_exists(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    except OSError:
        return False
    if started is not None:
        now_started = _process_start_ticks(pid)
        if now_started is not None and now_started != started:
            return False  # the pid was reused by another process
    return True


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """Where each claimed key stands.

    `mine`: claimed by this cache now; send them. `answered`: answered by someone meanwhile;
    use these answers. `elsewhere`: another live owner is answering them; wait with
    `poll_claims` instead of sending them again.
    """

    mine: list[bytes] = field(default_factory=list)
    answered: dict[bytes, Completion] = field(default_factory=dict)
    elsewhere: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClaimPoll:
    """`answered`: keys whose answer has arrived. `free`: keys no live owner claims any more
    (the owner failed, died or let the claim expire): claim and send them yourself. Keys in
    neither are still being answered elsewhere."""

    answered: dict[bytes, Completion] = field(default_factory=dict)
    free: list[bytes] = field(default_factory=list)


def _chunks(keys: Sequence[bytes]) -> Iterable[Sequence[bytes]]:
    for start in range(0, len(keys), _KEYS_PER_STATEMENT):
        yield keys[start : start + _KEYS_PER_STATEMENT]


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


class ResponseCache:
    """Request key -> `Completion`, in one SQLite file shared safely between processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.set_aside: Path | None = None
        self._lock = threading.Lock()
        pid = os.getpid()
        self._pid = pid
        self._pid_started = _process_start_ticks(pid)
        self._host = socket.gethostname()
        # Unique per cache object: two engines of one process on one file are two owners.
        self.owner = f"{self._host}:{pid}:{secrets.token_hex(6)}"
        self._damage_reported = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create the cache folder {self.path.parent}: {error}"
            ) from None
        self._connection = self._open()

    # -- opening -------------------------------------------------------------------------------

    def _refuse_foreign_file(self) -> None:
        """A file that is not a SQLite database is someone else's: never rename or replace it.
        (An empty file is a cache another process is creating this moment.)"""
        try:
            with self.path.open("rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except IsADirectoryError:
            raise ConfigError(f"the cache path {self.path} is a directory") from None
        except OSError as error:
            raise ConfigError(f"cannot read the cache file {self.path}: {error}") from None
        if not _SQLITE_HEADER.startswith(header):  # (a prefix: another process writing it)
            raise ConfigError(
                f"the cache path {self.path} holds a file that is not a gpo response cache (not "
                "a SQLite database); it was left untouched: give another cache path"
            )

    def _open(self) -> sqlite3.Connection:
        self._refuse_foreign_file()
        deadline = time.monotonic() + _OPEN_ATTEMPTS_S
        delay = 0.01
        while True:
            try:
                return self._connect()
            except sqlite3.OperationalError as error:
                if not _is_busy(error):
                    if _is_unreadable(error):
                        return self._set_aside_and_reconnect(error)
                    raise ConfigError(f"cannot open the cache file {self.path}: {error}") from None
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"the cache file {self.path} stayed locked by another process for "
                        f"{_OPEN_ATTEMPTS_S:.0f} s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except sqlite3.DatabaseError as error:
                return self._set_aside_and_reconnect(error)

    def _set_aside_and_reconnect(self, error: Exception) -> sqlite3.Connection:
        stamp = int(time.time())
        self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        copies = 1
        while self.set_aside.exists():  # never overwrite an earlier set-aside file
            copies += 1
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{copies}")
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
            self._refuse_foreign_database(connection)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute("SELECT key FROM responses LIMIT 1").fetchall()
            connection.execute("DELETE FROM inflight_claims WHERE expires < ?", (time.time(),))
            connection.execute(
                "INSERT OR REPLACE INTO claim_owners (owner, host, pid, pid_started, opened) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.owner, self._host, self._pid, self._pid_started, time.time()),
            )
            self._forget_dead_owners(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _refuse_foreign_database(self, connection: sqlite3.Connection) -> None:
        """Another program's SQLite database is left as it is (no tables added, no WAL mode)."""
        names = {
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchall()
        }
        foreign = sorted(names - _OUR_TABLES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"the cache path {self.path} holds a SQLite database that is not a gpo response "
                f"cache (it has {shown}); it was left untouched: give another cache path"
            )

    # -- answers -------------------------------------------------------------------------------

    def get(self, key: bytes) -> Completion | None:
        try:
            with self._lock:
                row = self._connection.execute(
                    "SELECT payload FROM responses WHERE key = ?", (key,)
                ).fetchone()
        except sqlite3.OperationalError:
            raise  # locked or I/O trouble: not damage, and not to be hidden
        except sqlite3.DatabaseError as error:
            self._report_damage(error)
            return None
        if row is None:
            return None
        return self._decode(row[0])

    def _decode(self, payload: bytes) -> Completion | None:
        try:
            return decode_completion(payload)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            logger.warning("cache entry in %s is damaged; it will be fetched again", self.path)
            return None

    def _report_damage(self, error: Exception) -> None:
        if not self._damage_reported:
            self._damage_reported = True
            logger.warning(
                "cache %s is damaged (%s); damaged entries are fetched again", self.path, error
            )

    def put_many(self, entries: Iterable[tuple[bytes, Completion]]) -> None:
        """Commit answers in one transaction, dropping this cache's claims on them. The first
        writer of a key wins; later ones are ignored, so two processes racing on the same
        request never disagree."""
        now = time.time()
        rows = [(key, encode_completion(c), now) for key, c in entries]
        if not rows:
            return
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
                    "INSERT OR IGNORE INTO responses (key, payload, created) VALUES (?, ?, ?)", rows
                )
                self._drop_claims([row[0] for row in rows])
                self._connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    # -- claims --------------------------------------------------------------------------------

    def claim_many(self, keys: Sequence[bytes], ttl_s: float = DEFAULT_CLAIM_TTL_S) -> ClaimOutcome:
        """Claim `keys` for this cache (renewing claims it already holds), in one transaction.

        A key is answered (its answer returned), claimed by another live owner (`elsewhere`),
        or now this cache's (`mine`).
        """
        outcome = ClaimOutcome()
        if not keys:
            return outcome
        now = time.time()
        expires = now + ttl_s
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                answered = self._answers(keys)
                open_keys = [key for key in keys if key not in answered]
                live = self._live_claims(open_keys, now)
                for key in open_keys:
                    (outcome.elsewhere if key in live else outcome.mine).append(key)
                owner = self.owner
                connection.executemany(
                    "INSERT OR REPLACE INTO inflight_claims (key, owner, expires) VALUES (?, ?, ?)",
                    [(key, owner, expires) for key in outcome.mine],
                )
                connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        for key, payload in answered.items():
            completion = self._decode(payload)
            if completion is None:  # damaged: answer it again
                outcome.mine.append(key)
            else:
                outcome.answered[key] = completion
        return outcome

    def poll_claims(self, keys: Sequence[bytes]) -> ClaimPoll:
        """Where keys claimed elsewhere stand now (read-only; never blocks on writers)."""
        poll = ClaimPoll()
        if not keys:
            return poll
        now = time.time()
        with self._lock:
            answered = self._answers(keys)
            live = self._live_claims([key for key in keys if key not in answered], now)
        for key in keys:
            payload = answered.get(key)
            if payload is not None:
                completion = self._decode(payload)
                if completion is not None:
                    poll.answered[key] = completion
                    continue
                poll.free.append(key)
            elif key not in live:
                poll.free.append(key)
        return poll

    def release_many(self, keys: Iterable[bytes]) -> None:
        """Drop this cache's claims on `keys` (their requests failed or were abandoned), so
        that waiting processes send them themselves without waiting for the expiry."""
        keys = list(keys)
        if not keys:
            return
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._drop_claims(keys)
                self._connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def claims_held(self) -> int:
        """How many claims this cache holds (for tests and diagnostics)."""
        with self._lock:
            return self._connection.execute(
                "SELECT COUNT(*) FROM inflight_claims WHERE owner = ?", (self.owner,)
            ).fetchone()[0]

    def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already (it rolls back by itself after
        some errors, such as a full disk, and a second ROLLBACK would hide the first error)."""
        if self._connection.in_transaction:
            try:
                self._connection.execute("ROLLBACK")
            except sqlite3.Error as error:
                logger.debug("rollback failed after an error: %s", error)

    def _answers(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for chunk in _chunks(keys):
            rows = self._connection.execute(
                f"SELECT key, payload FROM responses WHERE key IN ({_placeholders(len(chunk))})",
                tuple(chunk),
            ).fetchall()
            found.update(rows)
        return found

    def _forget_dead_owners(self, connection: sqlite3.Connection) -> None:
        """Remove the owners (and claims) of processes of this host that no longer run."""
        owners = connection.execute(
            "SELECT owner, pid, pid_started FROM claim_owners WHERE host = ?", (self._host,)
        ).fetchall()
        dead = [owner for owner, pid, started in owners if not _process_exists(pid, started)]
        for owner in dead:
            connection.execute("DELETE FROM inflight_claims WHERE owner = ?", (owner,))
            connection.execute("DELETE FROM claim_owners WHERE owner = ?", (owner,))

    def _drop_claims(self, keys: Sequence[bytes]) -> None:
        for chunk in _chunks(keys):
            self._connection.execute(
                "DELETE FROM inflight_claims "
                f"WHERE owner = ? AND key IN ({_placeholders(len(chunk))})",
                (self.owner, *chunk),
            )

    def _live_claims(self, keys: Sequence[bytes], now: float) -> set[bytes]:
        """The keys among `keys` that another owner holds a live claim on."""
        live: set[bytes] = set()
        verdicts: dict[str, bool] = {}
        for chunk in _chunks(keys):
            rows = self._connection.execute(
                "SELECT c.key, c.owner, o.host, o.pid, o.pid_started FROM inflight_claims c "
                "LEFT JOIN claim_owners o ON o.owner = c.owner "
                f"WHERE c.expires > ? AND c.owner != ? AND c.key IN ({_placeholders(len(chunk))})",
                (now, self.owner, *chunk),
            ).fetchall()
            for key, owner, host, pid, pid_started in rows:
                alive = verdicts.get(owner)
                if alive is None:
                    alive = verdicts[owner] = self._owner_alive(host, pid, pid_started)
                if alive:
                    live.add(key)
        return live

    def _owner_alive(self, host: str | None, pid: int | None, pid_started: int | None) -> bool:
        if host is None or pid is None:
            return False  # the owner closed its cache (and so dropped its claims)
        if host != self._host:
            return True  # another machine: only the expiry can tell
        return _process_exists(pid, pid_started)

    # -- housekeeping --------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Drop this cache's remaining claims and close the file."""
        with self._lock:
            try:
                self._connection.execute(
                    "DELETE FROM inflight_claims WHERE owner = ?", (self.owner,)
                )
                self._connection.execute("DELETE FROM claim_owners WHERE owner = ?", (self.owner,))
            except sqlite3.Error as error:
                logger.debug("could not drop claims on close: %s", error)
            self._connection.close()


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _is_unreadable(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "not a database" in text or "malformed" in text or "disk image" in text
