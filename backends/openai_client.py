"""An aiohttp client for any OpenAI-compatible endpoint (vLLM, llama.cpp server, hosted APIs).

One shared `aiohttp.ClientSession` per backend, its connector sized to the engine's concurrency
window. Every failure becomes a typed `BackendError` so retry policy can stay in the engine.
Requests and answers are (de)serialised with orjson: per-call CPU, not the network, is what limits
one Python client on loopback.

Redirects are never followed (the Authorization header would travel to whatever host a server
names): a 3xx is a `Redirected` error naming the target, with credentials scrubbed. Every URL in a
message or an identity is scrubbed of userinfo and credential-like query parameters, and the
keys the backend loads are remembered so that `backends.redaction.redact_known` can remove them
from anything a server sends back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import orjson

from backends.errors import (
    AuthenticationError,
    BackendError,
    ClientRequestError,
    ConfigError,
    ConnectionFailed,
    ContextLengthExceeded,
    MalformedResponse,
    RateLimited,
    Redirected,
    RequestTimeout,
    ServerError,
    UnknownModel,
    UnsupportedParameter,
)
from backends.openai_usage import merge_choices, parse_retry_after, split_total, usage_details
from backends.protocol import (
    PURPOSE_HEADER,
    Capabilities,
    Completion,
    Embeddings,
    Message,
    SamplingParams,
)
from backends.redaction import redact_known, remember_secret, scrub_text, scrub_url, url_password
from backends.request_shape import RequestShape, refused_parameter

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
RATE_LIMIT_HEADER_PREFIXES = ("x-ratelimit", "anthropic-ratelimit", "x-tokenlimit", "retry-after")
"""Headers handed to `rate_limit_observer`: what servers say about their rate limits."""
_ERROR_SNIPPET_CHARS = 300


def is_local_url(base_url: str) -> bool:
    """True for loopback and private-network hosts, which need no API key."""
    host = urlsplit(base_url).hostname or ""
    if host in ("localhost", ""):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def redact_url(url: str) -> str:
    """The URL without user:password or credential-like query parameters, so it can appear in
    logs, cache keys and messages."""
    return scrub_url(url)


def _clean(text: str) -> str:
    """A message safe to raise: URLs scrubbed, every known key removed."""
    return redact_known(scrub_text(text))


def _purpose_headers(params: SamplingParams) -> dict[str, str] | None:
    """The `X-GPO-Purpose` header of a call whose requests say what they ask for."""
    return {PURPOSE_HEADER: str(params.purpose)} if params.purpose is not None else None


class OpenAICompatibleBackend:
    """A `backends.protocol.Backend` speaking the OpenAI HTTP API.

    `api_key` defaults to `OPENAI_API_KEY`, `base_url` to `OPENAI_BASE_URL`. A hosted (non-local)
    endpoint without a key is a configuration error raised at construction, before any work.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        capabilities: Capabilities | None = None,
        max_connections: int = 256,
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        require_api_key: bool | None = None,
        identity: str | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base URL {redact_url(base_url)!r} must start with http:// or https://"
            )
        try:
            parts = urlsplit(base_url)
        except ValueError:
            raise ConfigError(f"base URL {redact_url(base_url)!r} is not a valid URL") from None
        # Paths are appended to the base URL's path; its query string (?api-version=...) follows.
        # Credentials in the URL (user:password@) travel as HTTP basic auth, never in the URL.
        host = parts.netloc.rpartition("@")[2]
        self._base_url = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
        root_path = parts.path.rstrip("/").removesuffix("/v1")
        self._server_root = urlunsplit((parts.scheme, host, root_path, "", ""))
        self.model_source: str | None = None
        """The model file or directory a server started here loaded (its chat template)."""
        self.model_fingerprint: str | None = None
        """What tells apart models served under one name (weights, template, length), learned
        when the endpoint is opened (`engine.server_identity`); part of `identity`."""
        self.server_facts: dict[str, Any] = {}
        """What the server said about itself when opened (kind, version, ...), for records."""
        self.system_fingerprints: list[str] = []
        """The distinct `system_fingerprint`s answers carried (hosted APIs), oldest first."""
        self._query = f"?{parts.query}" if parts.query else ""
        self._public_url = redact_url(self._base_url + self._query)
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._basic_auth: aiohttp.BasicAuth | None = None
        if "@" in parts.netloc:
            if self._api_key:
                raise ConfigError(
                    f"base URL {self._public_url!r} carries credentials (user:password@) and an "
                    "API key is set too (an API key variable or file); give only one"
                )
            self._basic_auth = aiohttp.BasicAuth(
                unquote(parts.username or ""), unquote(parts.password or "")
            )
        remember_secret(self._api_key)
        remember_secret(url_password(base_url))
        needs_key = (
            (not is_local_url(self._base_url)) if require_api_key is None else require_api_key
        )
        if needs_key and not self._api_key and self._basic_auth is None:
            raise AuthenticationError(
                "no API key for this hosted endpoint: set OPENAI_API_KEY or pass an API key file",
                endpoint=self._public_url,
            )
        self._model = model or ""
        self._identity = identity
        self._capabilities = capabilities or Capabilities()
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.rate_limit_observer: Callable[[dict[str, str]], None] | None = None
        """Called with an answer's rate-limit headers (lower-case names), in the call's task,
        whenever an answer carries some (the engine paces calls by them)."""
        self._shape = RequestShape(self._public_url)
        """The fields this endpoint's model refuses, learned from its errors (request_shape)."""
        self._headers = {"Content-Type": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"

    @property
    def identity(self) -> str:
        """The endpoint as cache keys see it. Servers started on a fresh port each run (the
        embedded model, a managed vLLM) pass a stable identity so their answers stay cached."""
        if self._identity is not None:
            base = f"{self._identity}|{self._model}"
        else:
            base = f"openai-compatible|{self._public_url}|{self._model}"
        return f"{base}|{self.model_fingerprint}" if self.model_fingerprint else base

    @property
    def model(self) -> str:
        return self._model

    @property
    def base_url(self) -> str:
        return self._public_url

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def with_capabilities(self, capabilities: Capabilities) -> None:
        """Replace what the endpoint is believed to accept (after probing it)."""
        self._capabilities = capabilities

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                auth=self._basic_auth,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
        *,
        at_root: bool = False,
        with_headers: bool = False,
        form: aiohttp.FormData | None = None,
        raw_answer: bool = False,
    ) -> Any:
        """One call; `timeout_s` (connect and answer) replaces the session's timeout; `at_root`:
        `path` is beside `/v1` (the server's own routes), not under it; `with_headers`: return
        (answer, the answer's headers with lower-case names); `form` is sent as a multipart
        body instead of `body`; `raw_answer` returns the answer's bytes unparsed."""
        query = self._query.replace("?", "&", 1) if "?" in path else self._query
        url = f"{self._server_root if at_root else self._base_url}{path}{query}"
        where = self._where(path)
        data: Any = orjson.dumps(body) if body is not None else None
        if form is not None:
            data = form()
            headers = {**(headers or {}), "Content-Type": data.content_type}
        options: dict[str, Any] = {"allow_redirects": False}
        if timeout_s is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s)
        try:
            session = self._get_session()
            async with session.request(
                method, url, data=data, headers=headers, **options
            ) as response:
                raw = await response.read()
                status = response.status
                if self.rate_limit_observer is not None:
                    self._observe_rate_limits(response.headers)
                answer_headers = {k.lower(): v for k, v in response.headers.items()}
                if 300 <= status < 400:
                    target = redact_url(response.headers.get("Location", "") or "(no Location)")
                    raise Redirected(
                        f"HTTP {status}: the server redirects to {target}; redirects are not "
                        "followed (the API key would go along): give the final URL instead",
                        endpoint=where,
                        status=status,
                    )
                if status >= 400:
                    raise self._http_error(status, raw, response.headers, where)
        except BackendError:
            raise
        except TimeoutError as error:
            raise RequestTimeout("no complete answer before the timeout", endpoint=where) from error
        except aiohttp.ClientConnectorError as error:
            reason = _clean(str(error.os_error.strerror or error.os_error))
            raise ConnectionFailed(f"cannot connect ({reason})", endpoint=where) from None
        except aiohttp.ClientPayloadError as error:
            raise MalformedResponse(
                _clean(f"truncated response body ({error})"), endpoint=where
            ) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
            raise ConnectionFailed(_clean(f"connection lost ({error})"), endpoint=where) from None
        except aiohttp.ClientError as error:
            raise ConnectionFailed(
                _clean(f"{type(error).__name__}: {error}"), endpoint=where
            ) from None
        if raw_answer:
            return raw
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            snippet = _clean(raw[:80].decode("utf-8", "replace"))
            raise MalformedResponse(
                f"answer is not JSON ({len(raw)} bytes, starting {snippet!r})", endpoint=where
            ) from None
        if isinstance(payload, dict):
            self._note_fingerprint(payload.get("system_fingerprint"))
        return (payload, answer_headers) if with_headers else payload

    def _note_fingerprint(self, fingerprint: Any) -> None:
        """Keep a hosted API's `system_fingerprint` (its backend configuration) when new."""
        seen = self.system_fingerprints
        if isinstance(fingerprint, str) and fingerprint and fingerprint not in seen[-8:]:
            seen.append(fingerprint[:64])
            del seen[:-8]

    def _observe_rate_limits(self, headers: Any) -> None:
        assert self.rate_limit_observer is not None
        found = {
            lowered: value
            for name, value in headers.items()
            if (lowered := name.lower()).startswith(RATE_LIMIT_HEADER_PREFIXES)
        }
        if found:
            self.rate_limit_observer(found)

    def _http_error(self, status: int, raw: bytes, headers: Any, where: str) -> BackendError:
        message = self._error_message(raw)
        if status == 429:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            if retry_after is None and "too large" in message.lower():
                # Larger than the limit itself: waiting can never admit it. Not retryable, so
                # the engine splits a prompt list and fails only a prompt that is too large alone.
                return ClientRequestError(f"HTTP 429: {message}", endpoint=where, status=status)
            limits = {
                k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit")
            }
            return RateLimited(
                f"rate limited: {message}",
                endpoint=where,
                retry_after=retry_after,
                limits=limits,
            )
        if status >= 500:
            return ServerError(f"HTTP {status}: {message}", endpoint=where, status=status)
        if status == 400 and (param := refused_parameter(raw)) is not None:
            return UnsupportedParameter(
                f"HTTP 400: {message}", endpoint=where, status=status, param=param
            )
        if status in (401, 403):
            return AuthenticationError(
                f"HTTP {status}: the server refused the credentials", endpoint=where, status=status
            )
        lowered = message.lower()
        # vLLM says "maximum context length" for a long prompt, "cannot be greater than
        # max_model_len" for a max_tokens beyond the context.
        context_words = ("context length", "context window", "too long", "max_model_len")
        if any(words in lowered for words in context_words):
            return ContextLengthExceeded(f"HTTP {status}: {message}", endpoint=where, status=status)
        if status == 404 and "model" in lowered:
            return UnknownModel(
                f"HTTP 404: model {self._model!r} is not served here: {message}",
                endpoint=where,
                status=status,
            )
        return ClientRequestError(f"HTTP {status}: {message}", endpoint=where, status=status)

    def _error_message(self, raw: bytes) -> str:
        text = raw[: _ERROR_SNIPPET_CHARS * 4].decode("utf-8", "replace")
        try:
            payload = orjson.loads(raw)
            error = payload.get("error", payload) if isinstance(payload, dict) else payload
            if isinstance(error, dict):
                text = str(error.get("message") or error)
            elif isinstance(error, str):
                text = error
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return _clean(text)[:_ERROR_SNIPPET_CHARS]

    def _where(self, path: str) -> str:
        return f"{self._base_url}{path}"

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        """One `/v1/completions` call; a list of prompts when there is more than one."""
        prompt: Any = prompts[0] if len(prompts) == 1 else list(prompts)
        return await self._generate("/completions", {"prompt": prompt}, params, prompts)

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        """One `/v1/chat/completions` call for one conversation."""
        turns = [{"role": role, "content": content} for role, content in messages]
        return (await self._generate("/chat/completions", {"messages": turns}, params, None))[0]

    async def _generate(
        self,
        path: str,
        content: dict[str, Any],
        params: SamplingParams,
        prompts: Sequence[str] | None,
    ) -> list[Completion]:
        """One generation call, re-sent with the refused field fitted when the model refuses
        one (`backends.request_shape`); `n` choices one call each where `n` is refused."""
        count = len(prompts) if prompts is not None else 1
        for _ in range(len(self._shape.omitted) + 8):  # each round fits one more field
            version = self._shape.version
            try:
                if params.n > 1 and self._shape.one_choice_per_call:
                    return await self._one_choice_each(path, content, params, prompts)
                body = {**self._shape.body(params), "model": self._model, **content}
                payload = await self._request("POST", path, body, _purpose_headers(params))
                return self._parse_choices(payload, count, params.n, path, prompts)
            except UnsupportedParameter as error:
                # Fitted now, by this refusal or by a concurrent call's: send again.
                if not self._shape.learn(error.param) and self._shape.version == version:
                    raise
        raise ClientRequestError("the model refuses every request shape", endpoint=path)

    async def _one_choice_each(
        self,
        path: str,
        content: dict[str, Any],
        params: SamplingParams,
        prompts: Sequence[str] | None,
    ) -> list[Completion]:
        """`n` calls of one choice each (seeded seed, seed + 1, ...), merged per prompt."""
        count = len(prompts) if prompts is not None else 1
        rounds: list[list[Completion]] = []
        for choice in range(params.n):
            seed = None if params.seed is None else params.seed + choice
            single = replace(params, n=1, seed=seed)
            body = {**self._shape.body(single), "model": self._model, **content}
            payload = await self._request("POST", path, body, _purpose_headers(single))
            rounds.append(self._parse_choices(payload, count, 1, path, prompts))
        return [merge_choices([answers[i] for answers in rounds]) for i in range(count)]

    def _parse_choices(
        self,
        payload: Any,
        prompt_count: int,
        n: int,
        path: str,
        prompts: Sequence[str] | None,
    ) -> list[Completion]:
        try:
            choices = payload["choices"]
            usage = payload.get("usage") or {}
            texts: list[list[str]] = [[""] * n for _ in range(prompt_count)]
            reasons: list[list[str]] = [[""] * n for _ in range(prompt_count)]
            seen = 0
            for position, choice in enumerate(choices):
                index = choice.get("index", position)
                prompt_index, choice_index = divmod(index, n)
                message = choice.get("message")
                text = message.get("content") if message is not None else choice.get("text")
                texts[prompt_index][choice_index] = text or ""
                reasons[prompt_index][choice_index] = choice.get("finish_reason") or ""
                seen += 1
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            cached_prompt, reasoning = usage_details(usage)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise MalformedResponse(
                f"answer lacks the expected choices ({type(error).__name__}: {error})",
                endpoint=self._where(path),
            ) from None
        if seen != prompt_count * n:
            raise MalformedResponse(
                f"expected {prompt_count * n} choices, got {seen}", endpoint=self._where(path)
            )
        if prompt_count == 1:
            return [
                Completion(
                    tuple(texts[0]),
                    prompt_tokens,
                    completion_tokens,
                    tuple(reasons[0]),
                    cached_prompt_tokens=cached_prompt,
                    reasoning_tokens=reasoning,
                )
            ]
        prompt_weights = [len(p) for p in prompts or ()]
        completion_weights = [sum(len(t) for t in group) for group in texts]
        prompt_parts = split_total(prompt_tokens, prompt_weights)
        completion_parts = split_total(completion_tokens, completion_weights)
        cached_parts = split_total(cached_prompt, prompt_weights)
        reasoning_parts = split_total(reasoning, completion_weights)
        return [
            Completion(
                tuple(texts[i]),
                prompt_parts[i],
                completion_parts[i],
                tuple(reasons[i]),
                cached_prompt_tokens=min(cached_parts[i], prompt_parts[i]),
                reasoning_tokens=min(reasoning_parts[i], completion_parts[i]),
            )
            for i in range(prompt_count)
        ]

    @property
    def request_shape(self) -> RequestShape:
        """What this endpoint's model was found to refuse (the Batch API's lines use it too)."""
        return self._shape

    async def api_call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        form: aiohttp.FormData | None = None,
        raw_answer: bool = False,
    ) -> Any:
        """One call to a route under `/v1` (the Batch API's `/files` and `/batches`): the same
        session, credentials and errors as every other call; see `_request`."""
        return await self._request(method, path, body, form=form, raw_answer=raw_answer)

    async def post_to_server(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        """POST to one of the server's own routes beside `/v1` (vLLM's `/tokenize`, llama.cpp's
        `/apply-template`): the same session, credentials and errors as every other call."""
        return await self._request("POST", path, body, timeout_s=timeout_s, at_root=True)

    async def metrics_text(self, timeout_s: float = 2.0) -> str | None:
        """The server's Prometheus text at `/metrics` beside `/v1` (vLLM's), or None where it
        has none or does not answer in `timeout_s`."""
        options = {"allow_redirects": False, "timeout": aiohttp.ClientTimeout(total=timeout_s)}
        try:
            session = self._get_session()
            async with session.get(f"{self._server_root}/metrics", **options) as response:
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError, ValueError):
            return None

    async def list_model_entries(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """The raw `/v1/models` entries (vLLM's carry `root`: the model directory it loaded)."""
        payload = await self._request("GET", "/models", None, timeout_s=timeout_s)
        data = payload.get("data") if isinstance(payload, dict) else None
        return [entry for entry in data or () if isinstance(entry, dict)]

    async def models_answer(
        self, timeout_s: float | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The `/v1/models` entries, each with an `id`, and the answer's headers (lower-case
        names: `server` says which software answers); `timeout_s` bounds this one call."""
        payload, headers = await self._request(
            "GET", "/models", None, timeout_s=timeout_s, with_headers=True
        )
        try:
            entries = list(payload["data"])
            if not all(isinstance(entry, dict) and "id" in entry for entry in entries):
                raise KeyError("id")
        except (KeyError, TypeError) as error:
            raise MalformedResponse(
                f"model list lacks data[].id ({error})", endpoint=self._where("/models")
            ) from None
        return entries, headers

    async def list_models(self, timeout_s: float | None = None) -> list[str]:
        """The model ids the endpoint serves (`/v1/models`); `timeout_s` bounds this one call
        (start-up probes use a short one, not the long generation timeout)."""
        entries, _ = await self.models_answer(timeout_s)
        return [entry["id"] for entry in entries]

    async def get_from_server(self, path: str, timeout_s: float) -> Any:
        """GET one of the server's own routes beside `/v1` (vLLM's `/version`, llama.cpp's
        `/props`), on the same host, with the same session and errors as every other call."""
        return await self._request("GET", path, None, timeout_s=timeout_s, at_root=True)

    async def embed(self, texts: Sequence[str], model: str | None = None) -> Embeddings:
        """One `/v1/embeddings` call: a vector per text, in input order, and the usage."""
        payload = await self._request(
            "POST", "/embeddings", {"model": model or self._model, "input": list(texts)}
        )
        try:
            rows = sorted(payload["data"], key=lambda row: row.get("index", 0))
            vectors = [row["embedding"] for row in rows]
            prompt_tokens = int((payload.get("usage") or {}).get("prompt_tokens") or 0)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise MalformedResponse(
                f"embedding answer lacks data[].embedding ({type(error).__name__}: {error})",
                endpoint=self._where("/embeddings"),
            ) from None
        if len(vectors) != len(texts):
            raise MalformedResponse(
                f"expected {len(texts)} embeddings, got {len(vectors)}",
                endpoint=self._where("/embeddings"),
            )
        return Embeddings(vectors, prompt_tokens)

    async def wait_until_ready(self, deadline_s: float = 60.0) -> None:
        """Poll `/v1/models` until it answers; a clear error when the deadline passes."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        last: BackendError | None = None
        while loop.time() < end:
            try:
                await self.list_models(timeout_s=max(1.0, min(10.0, end - loop.time())))
                return
            except (ConnectionFailed, ServerError, RequestTimeout, MalformedResponse) as error:
                last = error
                await asyncio.sleep(0.2)
        raise ConnectionFailed(
            f"endpoint not ready after {deadline_s:.0f} s ({last})", endpoint=self._public_url
        )
