"""Which server answers at a user-given URL, and what it therefore accepts: learned, not assumed.

`discover(backend, entries, headers)` reads what the start-up probe already fetched (the
`/v1/models` entries and the answer's headers) and asks at most one more of the server's own
routes, on the same host and port, each bounded by the probe timeout and asked once per
endpoint; nothing is sent anywhere else. What tells the kinds apart:

- `vllm`: `owned_by: "vllm"` (its entries carry `root` and `max_model_len`); asks `/version`.
- `llama.cpp` (llama-server): `owned_by: "llamacpp"`, a `server: llama.cpp` header, or (at a
  local host) a `/props` answer with `total_slots`; asks `/props` (slots, context length, chat
  template, model path, build).
- `llama-cpp-python`: `owned_by: "me"` (its hard-coded owner); asks nothing more.
- `hosted`: none of these, at a host that is not local; asks nothing more.
- `unknown`: none of these, at a local host (after asking `/props`).

What each kind gets (`ServerFacts.capabilities`): vLLM takes prompt lists and `n` (lists
confirmed, so a 5xx on one is retried, not split); its `max_num_seqs` is not published (not in
`/v1/models`, `/version` nor, in 0.32, `/metrics`), so the window keeps its default. llama.cpp's
server runs `total_slots` sequences at once (its `--parallel`), which becomes the window, and
does not honour `n`. llama-cpp-python runs one request at a time, refuses prompt lists (HTTP 500)
and drops `n`. Hosted APIs and unknown servers keep the defaults; the engine still learns from a
refused list (`engine.list_fallback`) and from 429s.

Capabilities a caller declares (`EndpointSpec.capabilities`: bench's description of its
simulated server) win over discovered ones; discovery then only adds what identifies the model
(`engine.server_identity`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from backends.errors import AuthenticationError, BackendError, Redirected
from backends.openai_client import OpenAICompatibleBackend, is_local_url
from backends.protocol import Capabilities

VLLM = "vllm"
LLAMA_CPP = "llama.cpp"
LLAMA_CPP_PYTHON = "llama-cpp-python"
HOSTED = "hosted"
UNKNOWN = "unknown"


def text_digest(text: str) -> str:
    """A short, stable digest of `text` (a chat template), for keys and records."""
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What a server said about itself and the model it serves under the requested name."""

    kind: str
    version: str | None = None
    server_header: str | None = None
    """The answer's `server` header (uvicorn for vLLM and llama-cpp-python, llama.cpp)."""
    root: str | None = None
    max_model_len: int | None = None
    slots: int | None = None
    chat_template: str | None = None
    """The digest of the chat template the server applies, when it shows it."""
    model_meta: str | None = None
    """llama.cpp's model description (`n_params`, `size`, `n_ctx_train`), as one string."""

    def capabilities(self) -> Capabilities:
        """What the engine may send this kind of server (see the module docs)."""
        if self.kind == VLLM:
            return Capabilities(lists_confirmed=True)
        if self.kind == LLAMA_CPP:
            return Capabilities(multiple_choices=False, max_concurrency=self.slots or 1)
        if self.kind == LLAMA_CPP_PYTHON:
            return Capabilities(prompt_lists=False, multiple_choices=False, max_concurrency=1)
        return Capabilities()

    def model_identity(self) -> dict[str, Any]:
        """The facts that tell apart two models served under one name (for cache keys): not
        the version or the slots, which change how a server runs, not what it answers."""
        facts = {
            "root": self.root,
            "max_model_len": self.max_model_len,
            "chat_template": self.chat_template,
            "model_meta": self.model_meta,
        }
        return {name: value for name, value in facts.items() if value is not None}

    def describe(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}


def _entry_for(entries: list[dict[str, Any]], model: str) -> dict[str, Any]:
    for entry in entries:
        if entry.get("id") == model:
            return entry
    return entries[0] if entries else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


async def _ask(backend: OpenAICompatibleBackend, path: str, timeout_s: float) -> dict[str, Any]:
    """One GET of the server's own route, once; {} when it does not answer with an object
    (a missing route is normal). Refused credentials or a redirect still raise."""
    try:
        answer = await backend.get_from_server(path, timeout_s)
    except (AuthenticationError, Redirected):
        raise
    except BackendError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _llama_meta(entry: dict[str, Any]) -> str | None:
    meta = entry.get("meta")
    if not isinstance(meta, dict):
        return None
    parts = [f"{name}={meta[name]}" for name in ("n_params", "size", "n_ctx_train") if name in meta]
    return ",".join(parts) or None


def _from_props(
    kind: str, entry: dict[str, Any], props: dict[str, Any], server: str | None
) -> ServerFacts:
    settings = props.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    template = props.get("chat_template")
    model_path = props.get("model_path")
    return ServerFacts(
        kind=kind,
        version=props.get("build_info") if isinstance(props.get("build_info"), str) else None,
        server_header=server,
        root=model_path if isinstance(model_path, str) else None,
        max_model_len=_int(n_ctx),
        slots=_int(props.get("total_slots")),
        chat_template=text_digest(template) if isinstance(template, str) and template else None,
        model_meta=_llama_meta(entry),
    )


async def discover(
    backend: OpenAICompatibleBackend,
    entries: list[dict[str, Any]] | None,
    headers: dict[str, str],
    timeout_s: float,
) -> ServerFacts:
    """The server's kind and the facts it shows about the model `backend` asks for, from the
    probe's `/v1/models` answer and at most one more route (see the module docs)."""
    entry = _entry_for(entries or [], backend.model)
    owner = entry.get("owned_by")
    server = headers.get("server")
    if owner == VLLM:
        version = (await _ask(backend, "/version", timeout_s)).get("version")
        return ServerFacts(
            kind=VLLM,
            version=version if isinstance(version, str) else None,
            server_header=server,
            root=entry.get("root") if isinstance(entry.get("root"), str) else None,
            max_model_len=_int(entry.get("max_model_len")),
        )
    if owner == "me":
        return ServerFacts(kind=LLAMA_CPP_PYTHON, server_header=server)
    says_llama = owner == "llamacpp" or "llama.cpp" in (server or "").lower()
    if says_llama or is_local_url(backend.base_url):
        props = await _ask(backend, "/props", timeout_s)
        if says_llama or "total_slots" in props:
            return _from_props(LLAMA_CPP, entry, props, server)
    kind = UNKNOWN if is_local_url(backend.base_url) else HOSTED
    root = entry.get("root")
    return ServerFacts(
        kind=kind,
        server_header=server,
        root=root if isinstance(root, str) else None,
        max_model_len=_int(entry.get("max_model_len")),
    )
