"""The simulated server's OpenAI Batch API: files, batches, status, output and error files.

Routes (OpenAI's shapes): `POST /v1/files` (multipart: `purpose=batch`, `file` = JSONL of
`{"custom_id", "method": "POST", "url", "body"}`), `GET /v1/files/{id}`,
`GET /v1/files/{id}/content`, `POST /v1/batches` (`input_file_id`, `endpoint`,
`completion_window` "24h", optional `metadata`), `GET /v1/batches` (newest first, `limit`),
`GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`.

A batch is `validating`, then `in_progress` for `config.batch_delay_s` simulated seconds (real
seconds = that / `time_scale`), then `finalizing` and `completed`: each line is answered by the
server's normal answer model (no GPU step model: a batch's latency is its delay). The output file
holds one line per answered request, `{"id", "custom_id", "response": {"status_code": 200,
"request_id", "body"}, "error": null}`; the error file one per failed request (a non-200
`response`, or `"error": {"code", "message"}` for a request never run: `batch_expired`,
`batch_cancelled`).

Test controls, `POST /sim/batches` with any of: `{"hold": true}` keeps every batch in progress
until `{"hold": false}`; `{"expire_next": N}` makes the next N batches expire with only their
first half of lines answered; `{"fail_every": K}` fails every K-th line of later batches with a
500 (0: none). `GET /sim/batches` lists the batches' states and how many lines each ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from backends.errors import BackendError
from backends.simulated.config import SimulatedServerConfig
from backends.simulated.openai_schema import (
    chat_body,
    completion_body,
    parse_chat_request,
    parse_completion_request,
)

_ENDPOINTS = {
    "/v1/chat/completions": (parse_chat_request, chat_body),
    "/v1/completions": (parse_completion_request, completion_body),
}
_DONE = ("completed", "failed", "expired", "cancelled")


def _error(message: str, status: int, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.json_response(body, status=status, dumps=lambda v: orjson.dumps(v).decode())


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


@dataclass
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    lines: list[dict[str, Any]]
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    stamps: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] | None = None
    expire: bool = False
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            **{f"{name}_at": stamp for name, stamp in self.stamps.items()},
            "request_counts": {
                "total": len(self.lines),
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


class BatchApi:
    """The Batch API's state and routes; `answer(generation)` is the server's answer model."""

    def __init__(self, config: SimulatedServerConfig, answer: Callable[[Any], list[Any]]) -> None:
        self.config = config
        self._answer = answer
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._released = asyncio.Event()
        self._released.set()
        self._expire_next = 0
        self._fail_every = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}", self.file_info)
        app.router.add_get("/v1/files/{id}/content", self.file_content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list_batches)
        app.router.add_get("/v1/batches/{id}", self.retrieve)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel)
        app.router.add_post("/sim/batches", self.control)
        app.router.add_get("/sim/batches", self.states)

    async def close(self) -> None:
        for batch in self._batches.values():
            if batch.task is not None:
                batch.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch.task

    def _new_file(self, name: str, purpose: str, content: bytes) -> dict[str, Any]:
        file_id = f"file-{next(self._ids):06d}"
        info = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
        }
        self._files[file_id] = (info, content)
        return info

    # -- files --------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return _error("expected a multipart/form-data body with purpose and file", 400)
        purpose, name, content = None, "upload.jsonl", None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                name = part.filename or name
                content = bytes(await part.read())
        if purpose != "batch" or content is None:
            return _error("a batch upload needs purpose=batch and a file", 400)
        return _json(self._new_file(name, purpose, content))

    async def file_info(self, request: web.Request) -> web.Response:
        found = self._files.get(request.match_info["id"])
        return _json(found[0]) if found else _error("No such File object", 404)

    async def file_content(self, request: web.Request) -> web.Response:
        found = self._files.get(request.match_info["id"])
        if found is None:
            return _error("No such File object", 404)
        return web.Response(body=found[1], content_type="application/octet-stream")

    # -- batches ------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error("the request body is not valid JSON", 400)
        endpoint = data.get("endpoint")
        if endpoint not in _ENDPOINTS:
            return _error(f"endpoint must be one of {', '.join(_ENDPOINTS)}", 400)
        if data.get("completion_window") != "24h":
            return _error("completion_window must be '24h'", 400)
        found = self._files.get(str(data.get("input_file_id")))
        if found is None:
            return _error("No such File object", 404)
        try:
            lines = [orjson.loads(line) for line in found[1].splitlines() if line.strip()]
        except orjson.JSONDecodeError:
            return _error("the input file is not JSONL", 400)
        ids = [line.get("custom_id") for line in lines if isinstance(line, dict)]
        if len(ids) != len(lines) or len(set(ids)) != len(ids) or not lines:
            return _error("every line needs a unique custom_id", 400)
        if any(line.get("url") != endpoint for line in lines):
            return _error("every line's url must be the batch's endpoint", 400)
        batch = _Batch(
            f"batch_{next(self._ids):06d}", endpoint, found[0]["id"], lines, int(time.time())
        )
        metadata = data.get("metadata")
        batch.metadata = dict(metadata) if isinstance(metadata, dict) else None
        if self._expire_next > 0:
            self._expire_next -= 1
            batch.expire = True
        self._batches[batch.id] = batch
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        return _json(batch.to_json())

    async def list_batches(self, request: web.Request) -> web.Response:
        """Newest first, `limit` (default 20, at most 100) of them, as OpenAI's list object."""
        try:
            limit = min(100, max(1, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error("limit must be an integer", 400)
        batches = list(reversed(self._batches.values()))
        data = [batch.to_json() for batch in batches[:limit]]
        return _json({"object": "list", "data": data, "has_more": len(batches) > limit})

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self._batches.get(request.match_info["id"])
        return _json(batch.to_json()) if batch else _error("No such Batch object", 404)

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self._batches.get(request.match_info["id"])
        if batch is None:
            return _error("No such Batch object", 404)
        if batch.status not in _DONE and batch.task is not None:
            batch.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batch.task
            self._finish(batch, [], batch.lines, "cancelled", "batch_cancelled")
        return _json(batch.to_json())

    async def control(self, request: web.Request) -> web.Response:
        data = orjson.loads(await request.read() or b"{}")
        if "hold" in data:
            if data["hold"]:
                self._released.clear()
            else:
                self._released.set()
        self._expire_next = int(data.get("expire_next", self._expire_next))
        self._fail_every = int(data.get("fail_every", self._fail_every))
        return await self.states(request)

    async def states(self, _request: web.Request) -> web.Response:
        return _json({b.id: b.to_json() for b in self._batches.values()})

    # -- processing ---------------------------------------------------------------------------

    async def _run(self, batch: _Batch) -> None:
        batch.status = "in_progress"
        batch.stamps["in_progress"] = int(time.time())
        await asyncio.sleep(self.config.batch_delay_s / self.config.time_scale)
        await self._released.wait()
        batch.status = "finalizing"
        batch.stamps["finalizing"] = int(time.time())
        run = batch.lines[: len(batch.lines) // 2] if batch.expire else batch.lines
        outputs, errors = [], []
        for number, line in enumerate(run, start=1):
            fail = self._fail_every > 0 and number % self._fail_every == 0
            (errors if fail else outputs).append(self._execute(batch, line, fail))
        if batch.expire:
            self._finish(
                batch, outputs, errors, "expired", "batch_expired", batch.lines[len(run) :]
            )
        else:
            self._finish(batch, outputs, errors, "completed")

    def _execute(self, batch: _Batch, line: dict[str, Any], fail: bool) -> dict[str, Any]:
        parse, build = _ENDPOINTS[batch.endpoint]
        line_id = f"batch_req_{next(self._ids):06d}"
        request_id = f"req_{next(self._ids):06d}"
        status, body = 500, {"error": {"message": "simulated line failure", "type": "server"}}
        if not fail:
            try:
                generation = parse(line.get("body"), self.config)
                outputs = self._answer(generation)
                status = 200
                body = build(
                    generation,
                    outputs,
                    model=self.config.model,
                    request_id=request_id,
                    created=int(time.time()),
                )
            except BackendError as error:
                status = error.status or 400
                body = {"error": {"message": str(error), "type": "invalid_request_error"}}
        return {
            "id": line_id,
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }

    def _finish(
        self,
        batch: _Batch,
        outputs: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        status: str,
        code: str | None = None,
        never_run: list[dict[str, Any]] | None = None,
    ) -> None:
        message = {
            "batch_expired": "This request could not be executed before the completion window "
            "expired.",
            "batch_cancelled": "This request was not executed because the batch was cancelled.",
        }
        if code == "batch_cancelled":
            never_run, errors = errors, []
        for line in never_run or []:
            errors.append(
                {
                    "id": f"batch_req_{next(self._ids):06d}",
                    "custom_id": line["custom_id"],
                    "response": None,
                    "error": {"code": code, "message": message.get(code or "", code)},
                }
            )
        ok = [line for line in outputs if line["response"]["status_code"] == 200]
        errors = [line for line in outputs if line not in ok] + errors
        if ok:
            content = b"".join(orjson.dumps(line) + b"\n" for line in ok)
            batch.output_file_id = self._new_file(
                f"{batch.id}_output.jsonl", "batch_output", content
            )["id"]
        if errors:
            content = b"".join(orjson.dumps(line) + b"\n" for line in errors)
            batch.error_file_id = self._new_file(
                f"{batch.id}_error.jsonl", "batch_output", content
            )["id"]
        batch.completed, batch.failed = len(ok), len(errors)
        batch.status = status
        batch.stamps[status] = int(time.time())
