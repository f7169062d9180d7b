"""Which server each role of a run used: one line on stderr, one record in the run directory.

A run's numbers mean little without knowing what answered them: the embedded llama.cpp model, a
managed vLLM (CPU build or `vllm serve`, which version), or a URL the user gave. Each session
appends one JSON line per role to `servers.jsonl` (a resumed run adds its own lines) and prints
`gpo: ROLE: DESCRIPTION` on stderr. URLs are shown without credentials or query strings.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

from backends.openai_client import redact_url

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
) -> None:
    """Say on stderr which server `role` uses, and append it to the run's `servers.jsonl`."""
    where = f"; log {log_path}" if log_path is not None else ""
    print(f"gpo: {role}: {description}{where}", file=sys.stderr, flush=True)
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
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / SERVERS_FILE).open("ab") as handle:
        handle.write(orjson.dumps(entry) + b"\n")


def read_servers(run_dir: Path) -> list[dict[str, Any]]:
    """The records `record_server` left in `run_dir` (oldest first); [] when there are none."""
    path = run_dir / SERVERS_FILE
    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
