"""Batch API policy: requests that can wait answered through OpenAI's Batch API at its price.

An `Engine` given a `BatchRunner` (`engine.batch = runner`) sends every cacheable request that
misses the cache here instead of to the chat/completions route (with `all_requests=False`, only
those made inside `work_that_can_wait()`):

- Requests are gathered until none has arrived for `gather_s` (an evaluation asks its first
  turns together, then its follow-ups), written as Batch API JSONL with `custom_id` = the
  cache's request key (hex), one batch per endpoint URL and phase, uploaded and created.
- The batch's id and input are written to the run directory (`batches.json`, and the input
  lines under `batch-inputs/`) *before* any waiting, so a process killed while a batch is
  pending finds it on resume (`start()`), polls it instead of submitting again, and collects it
  even if it completed meanwhile. A process killed while creating a batch left it
  "submitting": the resume finds it among the endpoint's recent batches by the input's name in
  its metadata, or submits it if the endpoint never got it.
- A batch is polled with back-off (`poll_first_s` doubling to `poll_max_s`), for at most
  `timeout_s`; past that its requests fail with kind `batch_timeout` and a message saying the
  same command collects it later (its id stays in the run directory).
- Results are matched back by `custom_id` into the response cache and the ledger at the batch
  price (`billing="batch"`), each output line charged once: by its line id in this process, and
  a batch marked `collected` in `batches.json` is never collected again.
- Failed or expired lines are re-submitted in a new batch, up to `max_attempts` batches per
  request; after that each fails as a `RequestFailed` of kind `batch` with the server's reason
  (a failed sample in the evaluation's records), never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from backends.errors import BackendError
from backends.openai_batch import (
    FINISHED_STATES,
    BatchTransport,
    parse_result_line,
    request_line,
)
from backends.protocol import Completion, Request
from backends.redaction import redact_completions
from backends.vllm_run_batch import LocalRunBatch
from engine.cache import ResponseCache
from engine.ledger import Ledger
from engine.retry_policy import RequestFailed

logger = logging.getLogger(__name__)

STATE_FILE = "batches.json"
INPUTS_DIR = "batch-inputs"
GPO_INPUT = "gpo_input"  # the batch's metadata key naming its input file
_CAN_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("gpo_can_wait", default=False)


@contextlib.contextmanager
def work_that_can_wait() -> Iterator[None]:
    """Requests made in this scope (and in tasks it starts) may go through the Batch API, for a
    runner made with `all_requests=False` (an optimisation's test evaluations, not its steps)."""
    token = _CAN_WAIT.set(True)
    try:
        yield
    finally:
        _CAN_WAIT.reset(token)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    gather_s: float = 0.5
    poll_first_s: float = 1.0
    poll_max_s: float = 60.0
    timeout_s: float = 26 * 3600.0
    max_attempts: int = 3
    max_lines: int = 50_000


class BatchRunner:
    """Gathers requests into Batch API batches, follows them, and answers their callers."""

    def __init__(
        self,
        transport: BatchTransport | LocalRunBatch,
        run_dir: Path,
        *,
        cache: ResponseCache | None,
        ledger: Ledger,
        settings: BatchSettings | None = None,
        all_requests: bool = True,
    ) -> None:
        self.transport = transport
        self.all_requests = all_requests
        self.run_dir = run_dir
        self.cache = cache
        self.ledger = ledger
        self.settings = settings or BatchSettings()
        self._waiters: dict[str, list[asyncio.Future[Completion]]] = defaultdict(list)
        self._queued: dict[str, tuple[dict[str, Any], str]] = {}
        self._submitted: set[str] = set()  # custom ids in a batch being followed
        self._charged: set[str] = set()  # output line ids already in the ledger
        self._entries: list[dict[str, Any]] = self._load_state()
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrived = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # -- state in the run directory ----------------------------------------------------------

    def _load_state(self) -> list[dict[str, Any]]:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            return []
        return list(orjson.loads(path.read_bytes()).get("batches", []))

    def _save_state(self) -> None:
        path = self.run_dir / STATE_FILE
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(orjson.dumps({"batches": self._entries}, option=orjson.OPT_INDENT_2))
        os.replace(temporary, path)

    def _input_lines(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        raw = (self.run_dir / entry["input"]).read_bytes()
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]

    @property
    def pending_batches(self) -> list[str]:
        return [entry["id"] for entry in self._entries if entry["state"] == "pending"]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the batches an earlier process left pending (resume)."""
        for entry in list(self._entries):
            if entry["state"] in ("pending", "submitting"):
                lines = self._input_lines(entry)
                self._submitted.update(line["custom_id"] for line in lines)
                pending = entry["state"] == "pending"
                self._spawn(self._follow(entry, lines) if pending else self._adopt(entry, lines))

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._tasks, *([self._flusher] if self._flusher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        failure = RequestFailed("the engine was closed while its batch was pending", "closed", 1)
        for custom_id in list(self._waiters):
            self._fail(custom_id, failure, record=False)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- callers ------------------------------------------------------------------------------

    def applies(self) -> bool:
        """Whether a request made now goes through a batch (see `work_that_can_wait`)."""
        return self.all_requests or _CAN_WAIT.get()

    async def answer(self, key: bytes, request: Request, phase: str) -> Completion:
        """The answer to `request` (cache key `key`) through a batch; raises `RequestFailed`."""
        if self._closed:
            raise RequestFailed("the engine is closed", "closed", 0)
        custom_id = key.hex()
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._waiters[custom_id].append(future)
        if custom_id not in self._submitted and custom_id not in self._queued:
            line = request_line(custom_id, request, self.transport.model, self.transport.shape)
            self._queued[custom_id] = (line, phase)
            self._arrived += 1
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush_when_quiet())
        return await future

    async def _flush_when_quiet(self) -> None:
        """Submit what is queued once no request arrived for `gather_s` (or it is full)."""
        settings = self.settings
        seen = -1
        while self._queued:
            if seen == self._arrived or len(self._queued) >= settings.max_lines:
                batch, self._queued = self._queued, {}
                groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
                for line, phase in batch.values():
                    groups[(line["url"], phase)].append(line)
                for (_, phase), lines in groups.items():
                    for start in range(0, len(lines), settings.max_lines):
                        await self._submit(lines[start : start + settings.max_lines], phase, 1)
                seen = -1
                continue
            seen = self._arrived
            await asyncio.sleep(settings.gather_s)

    # -- submitting and following -------------------------------------------------------------

    async def _submit(
        self, lines: list[dict[str, Any]], phase: str, attempt: int, replaces: Any = None
    ) -> None:
        """Write, upload and create one batch, journalled in `batches.json` around the create:
        "submitting" before it (a process killed there finds the batch by its metadata on
        resume), "pending" with its id before any waiting."""
        ids = [line["custom_id"] for line in lines]
        self._submitted.update(ids)
        inputs = self.run_dir / INPUTS_DIR
        inputs.mkdir(exist_ok=True)
        name = f"batch-input-{time.time_ns()}.jsonl"
        (inputs / name).write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        entry: dict[str, Any] = {
            "id": None,
            "endpoint": lines[0]["url"],
            "input": f"{INPUTS_DIR}/{name}",
            "phase": phase,
            "attempt": attempt,
            "state": "submitting",
            "submitted_at": time.time(),
        }
        self._entries.append(entry)
        if replaces is not None:
            replaces["state"] = "collected"
        self._save_state()
        try:
            file_id = await self.transport.upload(lines, name)
            batch = await self.transport.create(file_id, entry["endpoint"], {GPO_INPUT: name})
        except BackendError as error:
            self._entries.remove(entry)
            self._save_state()
            self._submitted.difference_update(ids)
            failure = RequestFailed(f"cannot submit a batch: {error}", error.kind, attempt)
            for custom_id in ids:
                self._fail(custom_id, failure, phase=phase)
            return
        entry["id"], entry["state"] = batch["id"], "pending"
        self._save_state()  # before any waiting: a killed process finds it here
        logger.info("batch %s submitted: %d request(s), attempt %d", batch["id"], len(ids), attempt)
        self._spawn(self._follow(entry, lines))

    async def _adopt(self, entry: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        """An earlier process was killed while creating this batch: follow the batch if the
        endpoint has it (found by its input's name in the metadata), else submit it now."""
        name = entry["input"].rsplit("/", 1)[-1]
        try:
            recent = await self.transport.recent()
        except BackendError as error:
            logger.warning("cannot list batches to find %s: %s", name, error)
            recent = []
        found = [b for b in recent if (b.get("metadata") or {}).get(GPO_INPUT) == name]
        self._entries.remove(entry)
        if found:
            entry["id"], entry["state"] = found[0]["id"], "pending"
            self._entries.append(entry)
            self._save_state()
            self._spawn(self._follow(entry, lines))
        else:
            self._save_state()
            await self._submit(lines, entry["phase"], int(entry["attempt"]))

    async def _follow(self, entry: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        settings = self.settings
        started = time.monotonic()
        delay = settings.poll_first_s
        status: dict[str, Any] = {}
        while status.get("status") not in FINISHED_STATES:
            if time.monotonic() - started > settings.timeout_s:
                self._time_out(entry, lines, status.get("status", "unknown"))
                return
            try:
                status = await self.transport.retrieve(entry["id"])
            except BackendError as error:
                if not error.retryable:
                    self._give_up(entry, lines, f"cannot read batch {entry['id']}: {error}")
                    return
                logger.warning("polling batch %s: %s", entry["id"], error)
            if status.get("status") not in FINISHED_STATES:
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.poll_max_s)
        try:
            results = await self.transport.lines(status.get("output_file_id"))
            results += await self.transport.lines(status.get("error_file_id"))
        except BackendError as error:
            self._give_up(entry, lines, f"cannot read batch {entry['id']}'s results: {error}")
            return
        await self._collect(entry, lines, status, results)

    async def _collect(
        self,
        entry: dict[str, Any],
        lines: list[dict[str, Any]],
        status: dict[str, Any],
        results: list[dict[str, Any]],
    ) -> None:
        """Answers into the cache and ledger; failed lines re-submitted or failed."""
        by_id = {line.get("custom_id"): line for line in results}
        answered: list[tuple[str, Completion, str]] = []
        failed: list[tuple[dict[str, Any], str]] = []
        for line in lines:
            result = by_id.get(line["custom_id"])
            n = int(line["body"].get("n") or 1)
            outcome = (
                parse_result_line(result, n)
                if result is not None
                else f"batch {status.get('status')} without an answer to this request"
            )
            if isinstance(outcome, Completion):
                answered.append((line["custom_id"], outcome, str(result and result.get("id"))))
            else:
                failed.append((line, outcome))
        completions = redact_completions([completion for _, completion, _ in answered])
        answered = [(cid, c, lid) for (cid, _, lid), c in zip(answered, completions, strict=True)]
        if self.cache is not None and answered:
            self.cache.put_many([(bytes.fromhex(cid), c) for cid, c, _ in answered])
        model = self.transport.model
        for custom_id, completion, line_id in answered:
            if line_id not in self._charged:
                self._charged.add(line_id)
                self.ledger.record(model, entry["phase"], completion, billing="batch")
            self._submitted.discard(custom_id)
            for future in self._waiters.pop(custom_id, []):
                if not future.done():
                    future.set_result(completion)
        self._retry_or_fail(entry, failed)

    def _retry_or_fail(
        self, entry: dict[str, Any], failed: list[tuple[dict[str, Any], str]]
    ) -> None:
        attempt = int(entry["attempt"])
        if failed and attempt < self.settings.max_attempts:
            logger.warning(
                "batch %s: %d request(s) not answered (%s); re-submitting them",
                entry["id"],
                len(failed),
                failed[0][1],
            )
            retry = [line for line, _ in failed]
            self._spawn(self._submit(retry, entry["phase"], attempt + 1, replaces=entry))
            return
        for line, reason in failed:
            self._submitted.discard(line["custom_id"])
            failure = RequestFailed(f"batch {entry['id']}: {reason}", "batch", attempt)
            self._fail(line["custom_id"], failure, phase=entry["phase"])
        entry["state"] = "collected"
        self._save_state()

    def _time_out(self, entry: dict[str, Any], lines: Sequence[dict[str, Any]], state: str) -> None:
        reason = (
            f"batch {entry['id']} still {state} after {self.settings.timeout_s:g} s; it stays "
            f"recorded in {self.run_dir / STATE_FILE}: run the same command again to collect it"
        )
        failure = RequestFailed(reason, "batch_timeout", int(entry["attempt"]))
        for line in lines:
            self._submitted.discard(line["custom_id"])
            self._fail(line["custom_id"], failure, phase=entry["phase"])

    def _give_up(self, entry: dict[str, Any], lines: Sequence[dict[str, Any]], reason: str) -> None:
        failure = RequestFailed(reason, "batch", int(entry["attempt"]))
        for line in lines:
            self._submitted.discard(line["custom_id"])
            self._fail(line["custom_id"], failure, phase=entry["phase"])

    def _fail(
        self, custom_id: str, failure: RequestFailed, *, phase: str = "", record: bool = True
    ) -> None:
        waiters = self._waiters.pop(custom_id, [])
        if record and waiters:
            self.ledger.record_failure(self.transport.model, phase, failure.kind)
        for future in waiters:
            if not future.done():
                future.set_exception(failure)
                future.exception()
