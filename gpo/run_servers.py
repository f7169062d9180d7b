"""The servers a run uses: which one each role used, and what to say when a managed one dies.

A run's numbers mean little without knowing what answered them: the embedded llama.cpp model, a
managed vLLM (CPU build or `vllm serve`, which version), or a URL the user gave. Each session
appends one JSON line per role to `servers.jsonl` (a resumed run adds its own lines) and prints
`gpo: ROLE: DESCRIPTION` on stderr, with why when the command chose it (the embedded model's
local server, `gpo.local_server`: e.g. "local server vllm: vLLM's CPU build is installed and this
CPU runs it (AVX-512 BF16)", kept as `origin`). URLs are shown without credentials or query
strings.

A server the run started that dies mid-run (killed, out of memory) otherwise surfaces as "cannot
connect" to a port the user never chose; `server_died_error` turns that into an error naming the
server, how it ended, its log, and how to continue.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from backends.errors import GpoError
from backends.openai_client import redact_url
from gpo.run_dir import STATE_FILE

SERVERS_FILE = "servers.jsonl"


def server_description(server: Any, url: str, model: str) -> str:
    """The server's own one-line description when it has one, else its URL and model."""
    described = getattr(server, "description", None)
    if isinstance(described, str) and described:
        return described
    return f"{redact_url(url)} serving {model}"


def record_server(
    run_dir: Path | None,
    role: str,
    *,
    kind: str,
    description: str,
    url: str,
    model: str,
    log_path: Path | None = None,
    version: str | None = None,
    facts: dict[str, Any] | None = None,
    origin: str | None = None,
) -> None:
    """Say on stderr which server `role` uses (and why, `origin`, when the command chose it),
    and append it to the run's `servers.jsonl`; `facts`: what the server said about itself
    (`engine.server_discovery`)."""
    where = f"; log {log_path}" if log_path is not None else ""
    learned = f" ({_facts_line(facts)})" if facts else ""
    why = f" [{origin}]" if origin else ""
    print(f"gpo: {role}: {description}{learned}{why}{where}", file=sys.stderr, flush=True)
    if run_dir is None:
        return
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "role": role,
        "kind": kind,
        "description": description,
        "url": redact_url(url),
        "model": model,
        "version": version,
        "log": str(log_path) if log_path is not None else None,
        "origin": origin,
    }
    if facts:
        entry["server"] = facts
    _append(run_dir, entry)


def _facts_line(facts: dict[str, Any]) -> str:
    """What discovery found, in words: "llama-cpp-python: window 1, no prompt lists, n ignored"."""
    kind = " ".join(str(facts[name]) for name in ("kind", "version") if facts.get(name))
    window = facts.get("window")
    said = [f"window {window}" if window else "window by default"]
    said.append("prompt lists" if facts.get("prompt_lists") else "no prompt lists")
    said.append("n honoured" if facts.get("n") else "n ignored")
    return f"{kind}: {', '.join(said)}"


def _append(run_dir: Path, entry: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / SERVERS_FILE).open("ab") as handle:
        handle.write(orjson.dumps(entry) + b"\n")


def record_learned(run_dir: Path | None, role: str, what: str, reason: str) -> None:
    """Keep in `servers.jsonl` a capability learned mid-run (`what`: "no prompt lists")."""
    if run_dir is None:
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "role": role, "learned": what}
    _append(run_dir, {**entry, "reason": reason})


def read_servers(run_dir: Path) -> list[dict[str, Any]]:
    """The records `record_server` left in `run_dir` (oldest first); [] when there are none."""
    path = run_dir / SERVERS_FILE
    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class ServerDied(GpoError):
    """A server the run started exited while the run was using it."""


def _how_it_ended(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def server_died_error(
    servers: Sequence[Any], error: BaseException, run_dir: Path | None
) -> ServerDied | None:
    """A `ServerDied` naming the first of `servers` (managed servers, with `.process`) that is
    no longer running, or None when all still run (then `error` has another cause)."""
    for server in servers:
        process = getattr(server, "process", None)
        if process is None or process.pid is None or process.running:
            continue
        name = getattr(process, "name", "the server")
        ended = _how_it_ended(process.returncode)
        return ServerDied(
            f"{name} {ended} during the run ({error}); its log: {process.log_path}. "
            f"Finished work is saved{resume_hint(run_dir)}"
        )
    return None


@contextlib.contextmanager
def explain_server_death(servers: Sequence[Any], run_dir: Path | None) -> Iterator[None]:
    """Turn a `GpoError` raised while one of `servers` has died into `server_died_error`'s."""
    try:
        yield
    except GpoError as error:
        died = server_died_error(servers, error, run_dir)
        if died is not None:
            raise died from error
        raise


def resume_hint(run_dir: Path | None) -> str:
    """How to continue the work saved in `run_dir`: "; continue with: ..." or ""."""
    if run_dir is None:
        return ""
    if (run_dir / STATE_FILE).exists():  # an optimize run directory
        return f"; continue with: gpo optimize --resume {run_dir}"
    return f" in {run_dir}; run the same `gpo eval` with `--overwrite` to reuse its cached answers"
