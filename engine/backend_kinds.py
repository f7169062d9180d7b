"""The built-in backend kinds, registered with `engine.backend_registry`.

- "url": one or several OpenAI-compatible base URLs (several are one `EndpointPool`, routed by
  `EndpointSpec.routing`: prefix affinity by default, least-loaded behind a prefix-aware router).
- "embedded": the SmolLM2 model served by llama.cpp on a free loopback port; one server for every
  role of a run that uses it, stopped at the end.
- "vllm": a managed vLLM for MODEL (`EndpointSpec.serve`) on a free loopback port, one for every
  role naming the same MODEL, stopped at the end.

Each opens its backends through `open_http_backend`: the key read from the endpoint's key source,
the connection pool sized from its concurrency and, unless the endpoint says not to, the start-up
probe (`backends.startup_probe`), which checks the model against those the server lists or takes
the first one, so an unknown model or an unreachable server is one clear error naming the flag.
The probe's answer also tells which server this is (`engine.server_discovery`): a URL's
capabilities follow from it unless the endpoint declares its own, and what identifies the model
(plus, for servers started here, the weights' digest) enters the cache identity
(`engine.server_identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Backend, Capabilities
from backends.startup_probe import probe_timeout_s, served_model_entries
from engine.backend_registry import OpenContext, register_backend
from engine.endpoint_pool import EndpointPool
from engine.endpoint_spec import EndpointSpec
from engine.server_discovery import discover
from engine.server_identity import fingerprint, template_digest, weights_digest


async def open_http_backend(
    spec: EndpointSpec,
    url: str,
    capabilities: Capabilities,
    *,
    model: str | None = None,
    identity: str | None = None,
    managed: bool = False,
    weights: Path | None = None,
) -> OpenAICompatibleBackend:
    """A backend for `url` with `spec`'s key, timeouts and connection pool; the model is `model`
    (a server started here names its own), else `spec.model`, else the first one listed.
    `managed`: a server started here (its capabilities are its own, its weights are `weights`
    or the directory it reports as its `root`)."""

    def make(name: str | None) -> OpenAICompatibleBackend:
        return OpenAICompatibleBackend(
            url,
            name,
            api_key=spec.api_key.read(spec.flag_prefix),
            capabilities=capabilities,
            max_connections=spec.max_connections(capabilities),
            request_timeout_s=spec.request_timeout_s,
            connect_timeout_s=spec.connect_timeout_s,
            identity=identity,
        )

    wanted = model or spec.model
    backend = make(wanted)
    if not spec.probe:
        return backend
    try:
        entries, headers = await served_model_entries(backend, spec.role)
    except BaseException:
        await backend.close()
        raise
    models = None if entries is None else [entry["id"] for entry in entries]
    if wanted:
        if models is not None and models and wanted not in models:
            await backend.close()
            raise ConfigError(
                f"{spec.flag('model')} {wanted!r}: {backend.base_url} does not serve it; "
                f"it serves: {', '.join(models)}"
            )
    else:
        await backend.close()
        if not models:
            raise ConfigError(f"{spec.flag('model')}: {backend.base_url} lists no model; name one")
        backend = make(models[0])
    try:
        await _learn_server(backend, spec, entries, headers, managed, weights)
    except BaseException:
        await backend.close()
        raise
    return backend


async def _learn_server(
    backend: OpenAICompatibleBackend,
    spec: EndpointSpec,
    entries: list[dict[str, Any]] | None,
    headers: dict[str, str],
    managed: bool,
    weights: Path | None,
) -> None:
    """Which server this is: its capabilities (for a URL whose endpoint declares none) and what
    identifies its model, into the backend's cache identity."""
    facts = await discover(backend, entries, headers, probe_timeout_s())
    if not managed and spec.capabilities is None:
        backend.with_capabilities(facts.capabilities())
    identity = facts.model_identity()
    if managed:  # hashed once per file and machine (remembered by path, size and time)
        digest = await asyncio.to_thread(weights_digest, weights or facts.root)
        if digest is not None:
            identity["weights"] = digest
    else:
        templates = template_digest(facts.root)
        if templates is not None:
            identity["template_files"] = templates
    backend.model_fingerprint = fingerprint(identity)
    chosen = backend.capabilities
    backend.server_facts = {
        **facts.describe(),
        "prompt_lists": chosen.prompt_lists,
        "n": chosen.multiple_choices,
        "window": chosen.max_concurrency,
    }


@contextlib.asynccontextmanager
async def _closing(backend: Backend) -> AsyncIterator[Backend]:
    try:
        yield backend
    finally:
        await backend.close()


@register_backend("url")
@contextlib.asynccontextmanager
async def open_urls(spec: EndpointSpec, context: OpenContext) -> AsyncIterator[Backend]:
    """One backend per URL (several make a pool, routed as `spec.routing` says)."""
    if not spec.urls:
        raise ConfigError(f"{spec.flag('url')}: no URL given")
    backends: list[Backend] = []
    try:
        for url, identity in zip(spec.urls, spec.url_identities(), strict=True):
            # Declared capabilities are believed (lists included); else discovery decides.
            declared = spec.capabilities
            capabilities = (
                replace(declared, lists_confirmed=declared.prompt_lists)
                if declared is not None
                else Capabilities()
            )
            backends.append(await open_http_backend(spec, url, capabilities, identity=identity))
    except BaseException:
        for opened in backends:
            await opened.close()
        raise
    backend = backends[0] if len(backends) == 1 else EndpointPool(backends, routing=spec.routing)
    async with _closing(backend):
        yield backend


@register_backend("embedded")
@contextlib.asynccontextmanager
async def open_embedded(spec: EndpointSpec, context: OpenContext) -> AsyncIterator[Backend]:
    """The embedded llama.cpp model, started once for every role that uses it."""
    from backends.llamacpp import EmbeddedModelServer

    server = await context.shared(
        "embedded", lambda: EmbeddedModelServer(log_path=context.log_path("embedded-server.log"))
    )
    context.servers[spec.role] = server
    backend = await open_http_backend(
        spec,
        server.url,
        server.capabilities,
        model=server.model_name,
        identity="embedded-llama.cpp",
        managed=True,
        weights=server.model_path,
    )
    if server.model_path is not None:  # where `--ROLE-chat-template server` finds the template
        backend.model_source = str(server.model_path)
    async with _closing(backend):
        yield backend


@register_backend("vllm")
@contextlib.asynccontextmanager
async def open_vllm(spec: EndpointSpec, context: OpenContext) -> AsyncIterator[Backend]:
    """A managed vLLM serving `spec.serve` (`vllm serve` on a GPU, the CPU build without one),
    shared by every role that names the same model and stopped with the set of engines."""
    from backends.vllm_serve import ManagedVllmServer

    if not spec.serve:
        raise ConfigError(f"{spec.flag('vllm')}: no model to serve")
    log_path = context.log_path(f"vllm-{spec.role}.log")
    server = await context.shared(
        f"vllm:{spec.serve}", lambda: ManagedVllmServer(spec.serve, log_path=log_path)
    )
    context.servers[spec.role] = server
    backend = await open_http_backend(
        spec,
        server.url,
        server.capabilities,
        model=server.model_name,
        identity="managed-vllm",
        managed=True,
    )
    async with _closing(backend):
        yield backend
