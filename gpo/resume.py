"""Resuming a run: which flags may change, the arguments a run stores, and the record of changes.

A resumed run must be the same run, or it would not end with the same result; so a flag that
changes what the run computes (task, method, model, chat template, sizes, knobs, scoring) keeps
its stored value and giving another is an error naming the flag. Operational flags (where and
how requests are sent, the cache, prices, budgets, display) may change: a server back on another
port, a longer timeout, more concurrency. Each change is recorded in config.json's `sessions`.

Stored paths are absolute, so a run resumes from any working directory. A run whose endpoint
moved keeps its cache keys: the new URLs take the old URLs' identities (`ROLE_url_identities`),
so every answer the run already paid for is replayed from its cache, not bought again.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from backends.openai_client import redact_url
from benchmarks import DATA_DIR_ENV, resolve_data_dir
from gpo.endpoint_flags import ROLES
from gpo.run_dir import RunDirectory
from gpo.runner import now_iso

# Not here, so fixed: the model, the chat template and --ROLE-no-prompt-lists (both decide the
# text the model reads), --ROLE-vllm (a model), the embedder and its model, sizes, knobs, scoring.
_OPERATIONAL_FLAGS = (
    "budget_usd",
    "budget_tokens",
    "no_progress",
    "log_level",
    "resume",
    "dry_run",
    "config",  # the file's values are checked one by one, as flags
    "data_dir",
    "run_dir",
    "tasks_at_once",
    "cells_at_once",
    "cache",
    "no_cache",
    "prices",
    "max_retries",
    "request_timeout",
    "embedding_base_url",
    "embedding_api_key_env",
    "embedding_device",
    "batch_api",  # how the test answers are bought, not what they are
    "batch_timeout",
    "batch_poll_max",
    "batch_attempts",
)
_OPERATIONAL_ROLE_FLAGS = (
    "url",
    "api_key_env",
    "api_key_file",
    "concurrency",
    "batch_size",
    "rpm",
    "tpm",
    "gpu_hour_usd",
    "routing",
)
RESUMABLE_CHANGES: tuple[str, ...] = _OPERATIONAL_FLAGS + tuple(
    f"{role}_{flag}" for role in ROLES for flag in _OPERATIONAL_ROLE_FLAGS
)
"""Flags that may differ when a run is resumed; none changes what the run computes."""
_UNRECORDED = ("no_progress", "log_level", "resume", "dry_run", "run_dir")
# Not stored: they say how this session shows its work, never carried into a resumed one.
_NOT_ARGUMENTS = ("resume", "command", "json", "progress_interval")


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(_absolute(value))
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def stored_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The flags worth keeping to resume, paths made absolute: everything but callables and the
    resume flag."""
    return {
        key: _jsonable(value)
        for key, value in vars(args).items()
        if not callable(value) and key not in _NOT_ARGUMENTS
    }


def _path_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {action.dest for action in parser._actions if action.type is Path}


def _same(now: Any, stored: Any) -> bool:
    return _jsonable(now) == _jsonable(stored)


def resumed_arguments(
    args: argparse.Namespace, stored: Mapping[str, Any], parser: argparse.ArgumentParser
) -> argparse.Namespace:
    """The stored run's arguments, with the operational flags given now taken from `args`.

    A flag counts as given when its value differs from the parser's default. Any other flag
    given now with a value other than the stored one is a ConfigError naming it.
    """
    paths = _path_flags(parser)
    merged = argparse.Namespace(**vars(args))
    for key, value in stored.items():
        if key in paths and value is not None:
            value = Path(value)
        now = getattr(args, key, None)
        given = now is not None and now != parser.get_default(key)
        if key in RESUMABLE_CHANGES:
            setattr(merged, key, now if given else value)
            continue
        if given and not _same(now, value):
            raise ConfigError(
                f"{flag_name(key)} cannot change when resuming {args.resume} (the run used "
                f"{value!r}, now {now!r}): it changes what the run computes. Operational flags "
                "may change: --ROLE-url, --ROLE-concurrency, --request-timeout, --max-retries, "
                "--ROLE-rpm/--ROLE-tpm, --cache, --data-dir, --budget-usd, --budget-tokens; "
                "start a new run to change the rest"
            )
        setattr(merged, key, value)
    return merged


def url_identity(url: str) -> str:
    """The cache identity `OpenAICompatibleBackend` gives `url` (before "|model")."""
    return f"openai-compatible|{redact_url(url.rstrip('/'))}"


def url_identities(
    stored: Mapping[str, Any], merged: argparse.Namespace, role: str
) -> list[str] | None:
    """The cache identities of `role`'s URLs now: the old URLs' ones when the URLs changed, one
    for one, so the cache keys stay the run's; None when there is nothing to keep."""
    old: Sequence[str] | None = stored.get(f"{role}_url")
    new: Sequence[str] | None = getattr(merged, f"{role}_url", None)
    kept: list[str] | None = stored.get(f"{role}_url_identities")
    if not old or not new:
        return None
    if list(old) == list(new):
        return kept
    if len(old) != len(new):
        return None
    return list(kept) if kept else [url_identity(url) for url in old]


def _shown(key: str, value: Any) -> Any:
    if key.endswith("_url") and value is not None:
        return [redact_url(url) for url in value] if isinstance(value, list) else redact_url(value)
    return value


def resume_changes(stored: Mapping[str, Any], merged: argparse.Namespace) -> list[dict[str, Any]]:
    """The operational flags whose value differs from the stored run's: flag, from, to."""
    changes = []
    for key in RESUMABLE_CHANGES:
        if key in _UNRECORDED:
            continue
        before, after = stored.get(key), _jsonable(getattr(merged, key, None))
        if before != after:
            changes.append(
                {"flag": flag_name(key), "from": _shown(key, before), "to": _shown(key, after)}
            )
    return changes


def describe_changes(changes: Sequence[Mapping[str, Any]]) -> str:
    """One line for stderr: `--flag old -> new; ...`."""
    return "; ".join(f"{c['flag']} {_brief(c['from'])} -> {_brief(c['to'])}" for c in changes)


def _brief(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return "(none)" if value is None else str(value)


@dataclass
class ReopenedRun:
    """A run directory being resumed: its config, the stored and the merged arguments."""

    run_dir: RunDirectory
    config: dict[str, Any]
    stored: dict[str, Any]
    arguments: argparse.Namespace

    def record_session(self) -> list[dict[str, Any]]:
        """Add this session to config.json's `sessions`, with its changes (also noted on
        stderr), and keep the arguments it runs with for the next resume."""
        changes = resume_changes(self.stored, self.arguments)
        if changes:
            print(
                f"gpo optimize: resuming {self.run_dir.path} with changed settings: "
                f"{describe_changes(changes)}",
                file=sys.stderr,
            )
        sessions = self.config.get("sessions")
        sessions = list(sessions) if isinstance(sessions, list) else []
        sessions.append({"resumed": now_iso(), "changes": changes})
        self.config.update(
            arguments=stored_arguments(self.arguments),
            data_dir=self.arguments.data_dir,
            sessions=sessions,
        )
        self.run_dir.write_config(self.config)
        return changes


def reopen_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ReopenedRun:
    """The run at `args.resume` with its stored arguments and the operational flags of `args`.

    Its data is the directory the run recorded, unless --data-dir or $GPO_DATA_DIR names
    another; every path is absolute, so the working directory does not matter.
    """
    opened = RunDirectory.open_existing(args.resume)
    opened.check_writable("--resume")
    home = _absolute(opened.path)
    if args.run_dir is not None and _absolute(args.run_dir) != home:
        raise ConfigError(
            f"--run-dir {args.run_dir}: a resumed run stays in its directory {home}; "
            "drop --run-dir or start a new run"
        )
    config = opened.read_config()
    stored = config.get("arguments")
    if not isinstance(stored, dict):
        raise ConfigError(f"--resume {args.resume}: config.json holds no arguments")
    merged = resumed_arguments(args, stored, parser)
    merged.resume = merged.run_dir = home
    if args.data_dir is None:
        recorded = config.get("data_dir") or stored.get("data_dir")
        merged.data_dir = None if os.environ.get(DATA_DIR_ENV) else recorded
        if merged.data_dir is not None and not Path(merged.data_dir).expanduser().is_dir():
            raise ConfigError(
                f"--resume {args.resume}: the run's data directory {merged.data_dir} is gone; "
                f"name where the data is now with --data-dir or ${DATA_DIR_ENV}"
            )
    merged.data_dir = str(resolve_data_dir(merged.data_dir))
    for role in ROLES:
        setattr(merged, f"{role}_url_identities", url_identities(stored, merged, role))
    return ReopenedRun(RunDirectory(home), config, stored, merged)
