"""Backend kinds: each `EndpointSpec.kind` names a factory that opens a started `Backend`.

A factory is a function of (`EndpointSpec`, `OpenContext`) returning an async context manager:
entering it starts whatever the endpoint needs (a server, a probe, a pool of URLs) and yields
the backend, whose `capabilities` say what the server accepts; leaving it closes the backend and
stops what it started. Adding a backend kind is one registration:

    @register_backend("my-kind")
    @contextlib.asynccontextmanager
    async def open_my_kind(spec: EndpointSpec, context: OpenContext) -> AsyncIterator[Backend]:
        ...
        yield backend

The built-in kinds ("url", "embedded", "vllm") register in `engine.backend_kinds`, loaded on
first use. `OpenContext` is what the factories of one set of engines share: where servers log,
and servers that several roles use (`shared`: the embedded model is started once per run).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from backends.errors import ConfigError
from backends.protocol import Backend
from engine.endpoint_spec import EndpointSpec

T = TypeVar("T")

BUILTIN_KINDS_MODULE = "engine.backend_kinds"


@dataclass(slots=True)
class OpenContext:
    """What the factories opening one set of engines share. `stack` holds the shared servers:
    they stop when the set of engines closes, after every backend that uses them."""

    stack: contextlib.AsyncExitStack
    log_dir: Path | None = None
    servers: dict[str, Any] = field(default_factory=dict)
    """The server each role's factory started or reused, by role (none for plain URLs)."""
    _shared: dict[str, Any] = field(default_factory=dict)

    def log_path(self, name: str) -> Path | None:
        """Where a server started here writes its log (None: a temporary file)."""
        return self.log_dir / name if self.log_dir is not None else None

    async def shared(self, key: str, start: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        """The server `key`, started by `start()` on first use and kept for the other roles."""
        if key not in self._shared:
            self._shared[key] = await self.stack.enter_async_context(start())
        value: T = self._shared[key]
        return value


BackendFactory = Callable[[EndpointSpec, OpenContext], AbstractAsyncContextManager[Backend]]

_FACTORIES: dict[str, BackendFactory] = {}


def register_backend(kind: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: make `factory` the one that opens endpoints of `kind`."""

    def register(factory: BackendFactory) -> BackendFactory:
        _FACTORIES[kind] = factory
        return factory

    return register


def unregister_backend(kind: str) -> None:
    """Forget `kind` (tests that register a kind of their own)."""
    _FACTORIES.pop(kind, None)


def _load_builtin_kinds() -> None:
    importlib.import_module(BUILTIN_KINDS_MODULE)  # registers on import, once


def registered_kinds() -> tuple[str, ...]:
    _load_builtin_kinds()
    return tuple(sorted(_FACTORIES))


def open_backend(spec: EndpointSpec, context: OpenContext) -> AbstractAsyncContextManager[Backend]:
    """The factory of `spec.kind`, applied; a `ConfigError` naming the role for unknown kinds."""
    _load_builtin_kinds()
    factory = _FACTORIES.get(spec.kind)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise ConfigError(f"{spec.role}: unknown endpoint kind {spec.kind!r}; known: {known}")
    return factory(spec, context)
