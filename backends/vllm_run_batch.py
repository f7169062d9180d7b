"""The Batch API's local form: the same JSONL answered offline by `vllm run-batch`.

`LocalRunBatch` offers `BatchTransport`'s methods (upload, create, retrieve, recent, lines,
cancel), so the engine's `BatchRunner` uses it unchanged: "uploading" writes the input file under
a work folder, "creating" starts `python -m vllm.entrypoints.openai.run_batch -i IN -o OUT
--model DIR` (the vLLM environment's interpreter; see `vllm_cpu.py`) as a detached process whose
id, input and output are written beside it, and a batch is `completed` once that process has
exited leaving its output file (OpenAI's output format), `failed` otherwise. A process outlives
a killed `gpo`: the resumed run finds it by its recorded pid and collects its output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from backends.errors import ConfigError
from backends.request_shape import RequestShape
from backends.vllm_cpu import (
    CPU_KV_CACHE_ENV,
    CPU_KV_CACHE_GIB,
    EMBEDDED_VLLM_CONTEXT_TOKENS,
    EMBEDDED_VLLM_MODEL,
    cpu_build_installed,
    resolve_model,
    vllm_venv_dir,
    vllm_venv_python,
)

RUN_BATCH_ENTRYPOINT = "vllm.entrypoints.openai.run_batch"


def run_batch_command(model: str, served_name: str) -> tuple[list[str], dict[str, str]]:
    """The command (without -i/-o) and extra environment that run `model` with run-batch on the
    vLLM CPU build; `ConfigError` naming the setup step when it is not installed."""
    if not cpu_build_installed():
        raise ConfigError(
            f"--batch-api local: the vLLM CPU build is not in {vllm_venv_dir()}; run "
            "`gpo setup-local --vllm` to install it"
        )
    path, _ = resolve_model(model)
    command = [str(vllm_venv_python()), "-m", RUN_BATCH_ENTRYPOINT, "--model", path]
    command += ["--served-model-name", served_name, "--dtype", "bfloat16"]
    if model == EMBEDDED_VLLM_MODEL:
        command += ["--max-model-len", str(EMBEDDED_VLLM_CONTEXT_TOKENS), "--enforce-eager"]
    env = {} if CPU_KV_CACHE_ENV in os.environ else {CPU_KV_CACHE_ENV: CPU_KV_CACHE_GIB}
    return command, env


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the signal check
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class LocalRunBatch:
    """Batches run by a local command taking `-i IN -o OUT` (vLLM's run-batch)."""

    def __init__(
        self,
        command: Sequence[str],
        work_dir: Path,
        model: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.work_dir = work_dir
        self._model = model
        self._env = dict(env or {})
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def model(self) -> str:
        return self._model

    @property
    def shape(self) -> RequestShape:
        return RequestShape()

    def _meta_path(self, batch_id: str) -> Path:
        return self.work_dir / f"{batch_id}.json"

    def _meta(self, batch_id: str) -> dict[str, Any]:
        return orjson.loads(self._meta_path(batch_id).read_bytes())

    async def upload(self, lines: list[dict[str, Any]], name: str) -> str:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / name
        path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        return str(path)

    async def create(
        self, input_file_id: str, endpoint: str, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        batch_id = f"local-{time.time_ns()}"
        output = self.work_dir / f"{batch_id}.out.jsonl"
        log = self.work_dir / f"{batch_id}.log"
        with log.open("wb") as log_file:
            child = subprocess.Popen(
                [*self.command, "-i", input_file_id, "-o", str(output)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._env},
                start_new_session=True,  # it outlives a killed gpo; its output is collected later
            )
        self._children[batch_id] = child
        meta = {
            "id": batch_id,
            "pid": child.pid,
            "input": input_file_id,
            "output": str(output),
            "log": str(log),
            "endpoint": endpoint,
            "metadata": metadata,
        }
        self._meta_path(batch_id).write_bytes(orjson.dumps(meta))
        return {**meta, "status": "in_progress"}

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        meta = self._meta(batch_id)
        child = self._children.get(batch_id)
        running = child.poll() is None if child is not None else _alive(int(meta["pid"]))
        if running:
            return {**meta, "status": "in_progress"}
        output = Path(meta["output"])
        failed = child is not None and child.returncode != 0
        if output.exists() and not failed:
            return {**meta, "status": "completed", "output_file_id": str(output)}
        return {**meta, "status": "failed", "output_file_id": None}

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        if not self.work_dir.is_dir():
            return []
        metas = sorted(self.work_dir.glob("local-*.json"), reverse=True)[:limit]
        return [orjson.loads(path.read_bytes()) for path in metas]

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        meta = self._meta(batch_id)
        if _alive(int(meta["pid"])):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(meta["pid"]), signal.SIGTERM)
        return {**meta, "status": "cancelled"}

    async def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        raw = Path(file_id).read_bytes()
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
