"""What `gpo runs` lists: every run directory under a folder, read without changing anything.

A folder is recognised by what it holds:
- an optimize run directory (`gpo optimize`): `config.json` (and `state.json`, `summary.json`,
  `ledger*.json`, `tasks/`; see `gpo.run_dir`);
- a sweep directory (`gpo reproduce`): `sweep.json`, with one optimize run per cell under
  `cells/` (listed as one row: the sweep; its cells are run directories `gpo compare` reads);
- an evaluation folder (`gpo eval --out`): `records.jsonl` and, once finished, `summary.json`
  with per-prompt `rows`.
A folder that is none of these is searched (a few levels deep) for run directories; one that
holds none is listed as "foreign", one that cannot be read as "unreadable" with the reason.
Nothing here raises for a bad directory: each becomes a row saying what is wrong.

Status: "finished", "budget-stopped", "failed", "interrupted" (Ctrl-C, SIGTERM, or killed:
state.json says running but nobody holds `run.lock`), "running" (a live process holds
`run.lock`), and for evaluations also "some-failed" (scored, but some samples failed) and
"unfinished": no `summary.json` yet, so still running or stopped (`gpo eval` takes no lock, so
the two cannot be told apart; "running" if a process holds a `run.lock` there).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from gpo.ledger_view import run_totals
from gpo.run_dir import CONFIG_FILE, RunDirectory, read_json, read_jsonl
from gpo.run_lock import LOCK_FILE

SWEEP_FILE = "sweep.json"  # gpo.sweep.SWEEP_FILE (not imported: the sweep pulls in the runner)
RECORDS_FILE = "records.jsonl"  # gpo.eval_job.RECORDS_FILE
SUMMARY_FILE = "summary.json"
_MAX_DEPTH = 4
_STATUS = {"stopped": "budget-stopped", "stopped_by_budget": "budget-stopped"}
_EVAL_STATUS = {"all_failed": "failed", "some_failed": "some-failed"}


@dataclass(frozen=True, slots=True)
class RunCost:
    """What a run spent, over all its sessions. `cost_usd` counts priced models only."""

    calls: int | None = None
    tokens: int | None = None
    cost_usd: float | None = None
    unpriced_models: tuple[str, ...] = ()
    cache_hits: int | None = None

    @classmethod
    def from_totals(cls, totals: Mapping[str, Any] | None) -> RunCost:
        if not totals:
            return cls()
        return cls(
            calls=_int(totals.get("requests")),
            tokens=_int(totals.get("total_tokens")),
            cost_usd=float(totals["cost_usd"]) if totals.get("cost_usd") is not None else None,
            unpriced_models=tuple(totals.get("unpriced_models") or ()),
            cache_hits=_int(totals.get("cache_hits")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "unpriced_models": list(self.unpriced_models),
            "cache_hits": self.cache_hits,
        }


@dataclass(frozen=True, slots=True)
class RunRow:
    """One directory as `gpo runs` shows it. Scores are means over tasks, fractions in [0, 1]."""

    path: Path
    kind: str  # optimize / eval / reproduce / foreign / unreadable
    status: str
    method: str | None = None
    tasks: tuple[str, ...] = ()
    dev: float | None = None
    test: float | None = None
    cost: RunCost = field(default_factory=RunCost)
    started: str | None = None
    wall_time_s: float | None = None
    note: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "status": self.status,
            "method": self.method,
            "tasks": list(self.tasks),
            "final_dev": self.dev,
            "final_test": self.test,
            "cost": self.cost.to_json(),
            "started": self.started,
            "wall_time_s": self.wall_time_s,
            "note": self.note,
        }


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _mean(values: Sequence[float | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return sum(known) / len(known) if known else None


def run_kind(path: Path) -> str | None:
    """ "optimize", "reproduce" or "eval" when `path` is such a directory, else None."""
    if (path / SWEEP_FILE).is_file():
        return "reproduce"
    if (path / CONFIG_FILE).is_file():
        return "optimize"
    if (path / RECORDS_FILE).is_file() or _is_eval_summary(path / SUMMARY_FILE):
        return "eval"
    return None


def _is_eval_summary(path: Path) -> bool:
    if not path.is_file():
        return False
    with contextlib.suppress(ConfigError, OSError):
        summary = read_json(path)
        return isinstance(summary, dict) and isinstance(summary.get("rows"), list)
    return False


def lock_held(path: Path) -> bool:
    """True when a live process holds `path/run.lock`.

    Linux lists every flock in /proc/locks (MAJOR:MINOR:INODE): no entry for the file's inode
    means free, and one with its device too means held, found without touching the lock. Where
    only the inode matches (some file systems report another device number there) or there is
    no /proc/locks, a shared lock is tried and dropped at once.
    """
    lock = path / LOCK_FILE
    try:
        info = lock.stat()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        matches = [
            _device(word)
            for line in Path("/proc/locks").read_text().splitlines()
            if "FLOCK" in line
            for word in line.split()
            if word.count(":") == 2 and word.rsplit(":", 1)[-1] == str(info.st_ino)
        ]
        if not matches:
            return False
        if (os.major(info.st_dev), os.minor(info.st_dev)) in matches:
            return True
    return _probe(lock)


def _device(word: str) -> tuple[int, int] | None:
    """(major, minor) of a /proc/locks MAJOR:MINOR:INODE word (hex device numbers)."""
    major, minor, _ = word.split(":")
    try:
        return int(major, 16), int(minor, 16)
    except ValueError:
        return None


def _probe(lock: Path) -> bool:
    """Whether a shared lock on `lock` is refused (someone holds it exclusively)."""
    try:
        with lock.open("rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _status(path: Path, stored: str | None) -> str:
    if lock_held(path):
        return "running"
    if stored is None or stored == "running":
        return "interrupted"  # killed: it never wrote its end
    return _STATUS.get(stored, stored)


def _started(*candidates: Any) -> str | None:
    """The first candidate that reads as an ISO time, normalised to UTC seconds."""
    for value in candidates:
        if not isinstance(value, str):
            continue
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.astimezone(UTC).isoformat(timespec="seconds")
    return None


def _modified(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return None


def optimize_row(path: Path) -> RunRow:
    run = RunDirectory(path)
    config = run.read_config()
    state = run.read_state()
    summary = run.read_summary() or {}
    tasks = tuple(config.get("tasks") or run.task_names())
    results = [run.task(task).read_result() or {} for task in tasks]
    ledgers = run.recorded_ledgers()
    totals = run_totals(ledgers) if ledgers else None
    wall = totals.get("wall_time_s") if totals else summary.get("wall_time_s")
    return RunRow(
        path=path,
        kind="optimize",
        status=_status(path, state.get("status")),
        method=str(config.get("optimizer", {}).get("method") or "?"),
        tasks=tasks,
        dev=_mean([r.get("final_dev") for r in results]),
        test=_mean([r.get("final_test") for r in results]),
        cost=RunCost.from_totals(totals),
        started=_started(config.get("created"), state.get("started")) or _modified(path),
        wall_time_s=wall,
        note=state.get("error"),
    )


def sweep_row(path: Path) -> RunRow:
    sweep = read_json(path / SWEEP_FILE)
    run = RunDirectory(path)
    state = run.read_state()
    cells = sorted((path / "cells").glob("*/" + CONFIG_FILE))
    results = [
        run_result
        for cell in cells
        for run_result in (RunDirectory(cell.parent).task(t).read_result() for t in _tasks(cell))
        if run_result
    ]
    ledgers = run.recorded_ledgers()
    totals = run_totals(ledgers) if ledgers else None
    return RunRow(
        path=path,
        kind="reproduce",
        status=_status(path, state.get("status")),
        method="+".join(str(m) for m in sweep.get("methods", [])) or "?",
        tasks=tuple(sweep.get("tasks", [])),
        dev=_mean([r.get("final_dev") for r in results]),
        test=_mean([r.get("final_test") for r in results]),
        cost=RunCost.from_totals(totals),
        started=_started(sweep.get("created"), state.get("started")) or _modified(path),
        wall_time_s=totals.get("wall_time_s") if totals else None,
        note=f"{len(cells)} cells, seeds {sweep.get('seeds', '?')}",
    )


def _tasks(config_path: Path) -> list[str]:
    config = read_json(config_path)
    return list(config.get("tasks") or RunDirectory(config_path.parent).task_names())


def eval_row(path: Path) -> RunRow:
    summary_path = path / SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.is_file() else None
    servers = read_jsonl(path / "servers.jsonl")
    started = _started(*(line.get("time") for line in servers[:1])) or _modified(path)
    if summary is None:
        records = read_jsonl(path / RECORDS_FILE)
        tasks = tuple(dict.fromkeys(str(r.get("task")) for r in records))
        status = "running" if lock_held(path) else "unfinished"
        note = f"no {SUMMARY_FILE}: {len(records)} records written; still running or stopped"
        return RunRow(path, "eval", status, "eval", tasks, started=started, note=note)
    rows = [row for row in summary.get("rows", []) if isinstance(row, dict)]
    tasks = tuple(dict.fromkeys(str(row.get("task")) for row in rows))
    prompts = max((int(row.get("prompt_index", 0)) + 1 for row in rows), default=0)
    first = [row for row in rows if row.get("prompt_index", 0) == 0 and row.get("answered")]
    ledger = summary.get("ledger") or {}
    stored = str(summary.get("status", "finished"))
    return RunRow(
        path=path,
        kind="eval",
        status="running" if lock_held(path) else _EVAL_STATUS.get(stored, _status_of(stored)),
        method="eval" if prompts <= 1 else f"eval ({prompts} prompts)",
        tasks=tasks,
        dev=_mean([row.get("score") for row in first if row.get("split") == "eval"]),
        test=_mean([row.get("score") for row in first if row.get("split") == "test"]),
        cost=RunCost.from_totals(ledger.get("totals")),
        started=started,
        wall_time_s=ledger.get("wall_time_s"),
        note=f"{summary.get('failures')} samples failed" if summary.get("failures") else None,
    )


def _status_of(stored: str) -> str:
    return _STATUS.get(stored, stored)


_READERS = {"optimize": optimize_row, "reproduce": sweep_row, "eval": eval_row}


def read_row(path: Path) -> RunRow:
    """The row of one directory; never raises (an unreadable directory is a row saying why)."""
    try:
        kind = run_kind(path)
        if kind is None:
            return RunRow(path, "foreign", "foreign", note="not a gpo run directory")
        return _READERS[kind](path)
    except (ConfigError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return RunRow(path, "unreadable", "unreadable", note=f"{type(error).__name__}: {reason}")


def _walk(folder: Path, depth: int) -> Iterator[RunRow]:
    """Rows for the directories under `folder`: run directories, else searched deeper."""
    try:
        children = sorted(child for child in folder.iterdir() if child.is_dir())
    except OSError as error:
        yield RunRow(folder, "unreadable", "unreadable", note=error.strerror or str(error))
        return
    for child in children:
        if child.name.startswith("."):
            continue
        try:
            kind = run_kind(child)
        except OSError as error:
            yield RunRow(child, "unreadable", "unreadable", note=error.strerror or str(error))
            continue
        if kind is not None:
            yield read_row(child)
            continue
        nested = list(_walk(child, depth + 1)) if depth < _MAX_DEPTH else []
        if any(row.kind != "foreign" for row in nested):
            yield from nested
        else:
            yield RunRow(child, "foreign", "foreign", note="not a gpo run directory")


def list_runs(folder: str | os.PathLike[str]) -> list[RunRow]:
    """Every run directory under `folder` (or `folder` itself if it is one), by start time."""
    root = Path(folder)
    if not root.exists():
        raise ConfigError(f"{root}: no such folder")
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder")
    rows = [read_row(root)] if run_kind(root) else list(_walk(root, 1))
    return sorted(rows, key=lambda row: (row.started is None, row.started or "", str(row.path)))
