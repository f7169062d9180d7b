"""The OpenAI Batch API as a transport: request lines, file upload, batch create/poll/cancel.

What goes in a batch, when, and what a result means for a run is the engine's policy
(`engine/batch_api.py`); this module only speaks the wire format through an
`OpenAICompatibleBackend`'s one session (its credentials, redaction and errors):

- `request_line(custom_id, request, model)` is one JSONL line `{"custom_id", "method": "POST",
  "url", "body"}` with the body the backend would send for the request;
- `BatchTransport` uploads a file (`POST /v1/files`, purpose `batch`), creates a batch
  (`POST /v1/batches`, window "24h", metadata), lists recent batches, reads a batch's status
  and its output and error files;
- `parse_result_line(line, n)` turns one output/error line into a `Completion` or a reason.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from backends.openai_client import OpenAICompatibleBackend
from backends.openai_usage import usage_details
from backends.protocol import Completion, Request
from backends.request_shape import RequestShape

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
FINISHED_STATES = ("completed", "failed", "expired", "cancelled")


def request_line(
    custom_id: str, request: Request, model: str, shape: RequestShape | None = None
) -> dict[str, Any]:
    """One Batch API input line for `request` (a chat, or a completion of one prompt), its
    sampling fields fitted to what the endpoint's model accepts (`shape`)."""
    body = (shape or RequestShape()).body(request.params)
    body["model"] = model
    if request.messages is not None:
        body["messages"] = [{"role": role, "content": text} for role, text in request.messages]
        url = CHAT_URL
    else:
        body["prompt"] = request.prompt
        url = COMPLETIONS_URL
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def parse_result_line(line: dict[str, Any], n: int) -> Completion | str:
    """The answer in one output/error file line, or why it has none (a short reason)."""
    error = line.get("error")
    response = line.get("response") or {}
    if error:
        return f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
    status = response.get("status_code")
    body = response.get("body") or {}
    if status != 200:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        return f"HTTP {status}: {message or 'no message'}"
    try:
        texts, reasons = [""] * n, [""] * n
        for position, choice in enumerate(body["choices"]):
            index = choice.get("index", position)
            message = choice.get("message")
            text = message.get("content") if message is not None else choice.get("text")
            texts[index] = text or ""
            reasons[index] = choice.get("finish_reason") or ""
        usage = body.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cached, reasoning = usage_details(usage)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        return f"malformed answer ({type(error).__name__}: {error})"
    return Completion(
        tuple(texts),
        prompt_tokens,
        completion_tokens,
        tuple(reasons),
        cached_prompt_tokens=min(cached, prompt_tokens),
        reasoning_tokens=min(reasoning, completion_tokens),
    )


class BatchTransport:
    """Files and batches on one OpenAI-compatible endpoint."""

    def __init__(self, backend: OpenAICompatibleBackend) -> None:
        self.backend = backend

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def shape(self) -> RequestShape:
        """The fields the endpoint's model accepts, as its ordinary calls learned them."""
        return self.backend.request_shape

    async def upload(self, lines: list[dict[str, Any]], name: str) -> str:
        """Upload `lines` as a JSONL batch input file; its file id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        form.add_field("file", content, filename=name, content_type="application/jsonl")
        answer = await self.backend.api_call("POST", "/files", form=form)
        return str(answer["id"])

    async def create(
        self, input_file_id: str, endpoint: str, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if metadata:
            body["metadata"] = metadata
        return await self.backend.api_call("POST", "/batches", body)

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The endpoint's most recent batches, newest first (`GET /v1/batches`)."""
        answer = await self.backend.api_call("GET", f"/batches?limit={limit}")
        return list(answer.get("data") or [])

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self.backend.api_call("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self.backend.api_call("POST", f"/batches/{batch_id}/cancel")

    async def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        """The JSON lines of an output or error file (none for a missing file id)."""
        if not file_id:
            return []
        raw = await self.backend.api_call("GET", f"/files/{file_id}/content", raw_answer=True)
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
