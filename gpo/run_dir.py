"""The run directory: everything a run did, written as it goes, and what `--resume` reads.

Layout:

    config.json            the run's configuration (no secrets); each resume adds a session
    state.json             status (running / finished / stopped / failed), sessions, per-task status
    ledger.json            the engines' ledger snapshot of this session, rewritten every few
                           seconds and after each step (a killed session's spend is kept)
    ledger.session-N.json  the ledger of an earlier, interrupted session
    run.lock               held (flock) by the process working here; names it (gpo/run_lock.py)
    cache.sqlite           the engines' response cache: what makes a resumed run free to replay
    embeddings.jsonl       embedding cache (relevance retrieval)
    servers.jsonl          which server each role used, one line per role and session
    *-server.log, vllm-*.log  the logs of the servers the run started (embedded, managed vLLM)
    summary.json           per-task results and group averages, at the end
    tasks/<task>/          one folder per task ("bbh/navigate" -> "bbh__navigate"):
        trajectory.jsonl   one line per trajectory entry (prompt, dev score, word budget)
        meta_prompts.jsonl every text sent to the optimizer, with its raw answers
        candidates.jsonl   every candidate of every step, with its dev score
        scores.jsonl       per-sample scorer records of every evaluation
        result.json        the task's final result

JSON files are replaced atomically (write a temporary file, fsync, rename); JSONL files are
appended and flushed line by line. A resumed run replays an unfinished task from the start: its
JSONL files are rewritten, and every request it had answered comes back from the cache at no
cost, so the files end exactly as an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from backends.errors import ConfigError
from backends.redaction import has_key_prefix, looks_like_key, redact_known, scrub_text

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
LEDGER_FILE = "ledger.json"
CACHE_FILE = "cache.sqlite"
EMBEDDINGS_FILE = "embeddings.jsonl"
SUMMARY_FILE = "summary.json"
TASKS_DIR = "tasks"
TASK_LOGS = ("trajectory", "meta_prompts", "candidates", "scores")
RESULT_FILE = "result.json"

_SECRET_KEY = re.compile(
    r"(^|_)(api_?key|apikey|secret|password|passwd|authorization|bearer|token|credentials?)$",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(r"^(sk-|Bearer\s)", re.IGNORECASE)


def scrub_secrets(value: Any) -> Any:
    """A copy of `value` with secret-looking keys dropped and key-looking strings redacted.

    A key that names an environment variable (ending in `_env`) or a key file (`_file`) is kept:
    it is not a secret, unless its value is a key given there by mistake. URLs lose their
    userinfo and the values of credential-like query parameters, wherever they appear in a text.
    """
    if isinstance(value, Mapping):
        clean = {}
        for key, item in value.items():
            name = str(key).lower()
            if _SECRET_KEY.search(name) and not name.endswith("_env"):
                continue
            if name.endswith(("_env", "_file")) and isinstance(item, str) and looks_like_key(item):
                clean[str(key)] = "<redacted>"
                continue
            clean[str(key)] = scrub_secrets(item)
        return clean
    if isinstance(value, (list, tuple)):
        return [scrub_secrets(item) for item in value]
    if isinstance(value, str):
        if _SECRET_VALUE.match(value) or has_key_prefix(value):
            return "<redacted>"
        return redact_known(scrub_text(value))
    return value


def _dumps(data: Any) -> bytes:
    return orjson.dumps(
        data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    )


def atomic_write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON so that a reader sees the old file or the new one, never a mix."""
    payload = _dumps(data) + b"\n"
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSONL file; a torn last line (killed mid-write) is skipped."""
    if not path.exists():
        return []
    rows = []
    with path.open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return rows


def task_folder_name(task_name: str) -> str:
    return task_name.replace("/", "__")


class TaskRecorder:
    """The files of one task inside a run directory."""

    def __init__(self, path: Path, task_name: str) -> None:
        self.path = path
        self.task_name = task_name

    def start(self) -> None:
        """Begin (or begin again) the task: empty its logs and drop an old result."""
        self.path.mkdir(parents=True, exist_ok=True)
        for log in TASK_LOGS:
            (self.path / f"{log}.jsonl").write_bytes(b"")
        with contextlib.suppress(FileNotFoundError):
            (self.path / RESULT_FILE).unlink()

    def append(self, log: str, rows: Iterable[Mapping[str, Any]]) -> None:
        if log not in TASK_LOGS:
            raise ValueError(f"unknown task log {log!r}")
        with (self.path / f"{log}.jsonl").open("ab") as handle:
            for row in rows:
                handle.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            handle.flush()

    def read_log(self, log: str) -> list[dict[str, Any]]:
        return read_jsonl(self.path / f"{log}.jsonl")

    def write_result(self, result: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / RESULT_FILE, dict(result))

    def read_result(self) -> dict[str, Any] | None:
        path = self.path / RESULT_FILE
        return read_json(path) if path.exists() else None


class RunDirectory:
    """A run directory, checked writable before any work is done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, flag: str = "--run-dir") -> RunDirectory:
        """A new run directory: it may exist only if empty."""
        directory = Path(path)
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"{flag} {directory}: exists and is not a directory")
        if directory.is_dir() and any(directory.iterdir()):
            raise ConfigError(
                f"{flag} {directory}: the directory is not empty; "
                "continue it with --resume or choose another --run-dir"
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"{flag} {directory}: cannot create it: {error.strerror}") from None
        run = cls(directory)
        run.check_writable(flag)
        return run

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str], *, flag: str = "--resume") -> RunDirectory:
        """An earlier run directory, to resume or report on."""
        directory = Path(path)
        if not (directory / CONFIG_FILE).is_file():
            raise ConfigError(f"{flag} {directory}: not a run directory (no {CONFIG_FILE})")
        return cls(directory)

    def check_writable(self, flag: str = "--run-dir") -> None:
        """Fail early, with the flag to fix, when files cannot be written here."""
        probe = self.path / ".write-probe"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
            for name in (CACHE_FILE, STATE_FILE, LEDGER_FILE):
                target = self.path / name
                if target.exists() and not os.access(target, os.W_OK):
                    raise PermissionError(f"{target} is read-only")
        except OSError as error:
            reason = error.strerror or str(error)
            raise ConfigError(
                f"{flag} {self.path}: the run directory is not writable: {reason}"
            ) from None

    @property
    def cache_path(self) -> Path:
        return self.path / CACHE_FILE

    @property
    def embeddings_path(self) -> Path:
        return self.path / EMBEDDINGS_FILE

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / CONFIG_FILE, scrub_secrets(config))

    def read_config(self) -> dict[str, Any]:
        return read_json(self.path / CONFIG_FILE)

    def write_state(self, state: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / STATE_FILE, dict(state))

    def read_state(self) -> dict[str, Any]:
        path = self.path / STATE_FILE
        return read_json(path) if path.exists() else {}

    def write_ledger(self, snapshot: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / LEDGER_FILE, dict(snapshot))

    def read_ledger(self) -> dict[str, Any] | None:
        path = self.path / LEDGER_FILE
        return read_json(path) if path.exists() else None

    def archive_ledger(self, session: int) -> None:
        """Keep an interrupted session's ledger before a resumed session starts its own.

        An earlier session's file is never replaced: if `session`'s name is taken (a session
        killed before it recorded its number), the next free number is used.
        """
        path = self.path / LEDGER_FILE
        if not path.exists():
            return
        target = self.path / f"ledger.session-{session}.json"
        while target.exists():
            session += 1
            target = self.path / f"ledger.session-{session}.json"
        path.replace(target)

    def earlier_ledgers(self) -> list[dict[str, Any]]:
        paths = sorted(
            self.path.glob("ledger.session-*.json"),
            key=lambda p: int(p.stem.rsplit("-", 1)[-1]),
        )
        return [read_json(path) for path in paths]

    def recorded_ledgers(self) -> list[dict[str, Any]]:
        """Every session's ledger on disk: the archived ones and the last session's."""
        last = self.read_ledger()
        return [*self.earlier_ledgers(), *([last] if last is not None else [])]

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, dict(summary))

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY_FILE
        return read_json(path) if path.exists() else None

    def task(self, task_name: str) -> TaskRecorder:
        return TaskRecorder(self.path / TASKS_DIR / task_folder_name(task_name), task_name)

    def task_names(self) -> list[str]:
        folder = self.path / TASKS_DIR
        if not folder.is_dir():
            return []
        return sorted(child.name.replace("__", "/") for child in folder.iterdir() if child.is_dir())
