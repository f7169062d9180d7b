"""What an engine is built from: typed, frozen descriptions of endpoints, one per role.

- `ApiKeySource`: where a role's API key comes from, an environment variable's name or a file's
  path, never the key itself, so a specification can be logged, compared and stored. The key is
  read when the backend is built (`read`), and the backend remembers it for redaction.
- `EndpointSpec`: one role's endpoint (which `kind` of backend, from `engine.backend_registry`:
  "url" for one or several OpenAI-compatible URLs, "embedded" for the llama.cpp model started
  here, "vllm" for a managed `vllm serve`, or any kind registered later) and its scheduling
  policy (batch size, concurrency, rate limits, retries, timeouts, GPU-hour price). `role` names
  it in the engines' mapping and in every message: a flag such as `--scorer-url` is
  `flag("url")`, so a message built from a specification names the flag the user gave.
- `EngineSetSpec`: every role's endpoint and what the engines of a run share: the response
  cache, the price table, the budgets, where managed servers write their logs.

Building is `gpo.endpoints.open_engines(spec)`; the CLI turns its flags into a specification
(`gpo.endpoint_flags.spec_from_args`), bench and the fault matrix write theirs directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from backends.errors import ConfigError
from backends.protocol import Capabilities
from backends.redaction import looks_like_key
from backends.text_files import read_text_file
from engine.engine import EngineConfig

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True, slots=True)
class ApiKeySource:
    """A file (`file`, read first when given) or an environment variable (`env`) holding the key.

    No source (or an unset variable) gives no key: a backend for a local URL then sends none, and
    one for a hosted URL falls back to `OPENAI_API_KEY` or refuses to start.
    """

    env: str | None = DEFAULT_KEY_ENV
    file: Path | None = None

    def read(self, flag_prefix: str) -> str | None:
        """The key, or None; a `ConfigError` naming `{flag_prefix}-api-key-file` when the file
        cannot be read or is empty (its path unshown when it looks like a key itself)."""
        if self.file is None:
            return os.environ.get(self.env or "") or None
        flag = f"{flag_prefix}-api-key-file"
        shown = "the file" if looks_like_key(str(self.file)) else self.file
        try:
            key = read_text_file(Path(self.file), flag, secret=True).strip()
        except ConfigError:
            if shown != self.file:
                raise ConfigError(f"{flag}: cannot read the file") from None
            raise
        if not key:
            raise ConfigError(f"{flag}: {shown} is empty")
        return key


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One role's endpoint and the policy its engine runs under.

    `urls` and `identities` belong to kind "url" (several URLs make a pool; an identity kept by
    a resumed run whose endpoint moved replaces a URL's own in cache keys). `serve` is the model
    a managed server starts (kind "vllm"). `capabilities` is what the server is known to accept
    before any probe (a benchmark's server description); servers started here report their own.
    `probe`: ask the server which models it serves before any work, with the short start-up
    timeout, so a server that is down or a model it does not serve is one clear error; off
    where the model is known and every request counts (bench, the fault matrix).
    `origin`: why this endpoint was chosen when the user did not name it (the embedded model's
    local server), said and kept with the run's record of servers.
    """

    role: str = "default"
    kind: str = "url"
    urls: tuple[str, ...] = ()
    identities: tuple[str | None, ...] = ()
    model: str | None = None
    serve: str | None = None
    api_key: ApiKeySource = field(default_factory=ApiKeySource)
    capabilities: Capabilities | None = None
    concurrency: int | None = None
    batch_size: int = 32
    prompt_lists: bool = True
    chat_template: str | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    rate_window_s: float = 60.0
    max_retries: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    seed: int = 0
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    probe: bool = True
    gpu_hour_usd: float | None = None
    routing: str = "affinity"
    """How several URLs share the calls (`engine.prefix_affinity.ROUTINGS`): "affinity" (prefix
    affinity with bounded loads) or "least-loaded" (for replicas behind a prefix-aware router)."""
    origin: str | None = None

    def flag(self, name: str) -> str:
        """The command-line flag for this role's setting `name`: `--scorer-url` for "url"."""
        return f"--{self.role}-{name}"

    @property
    def flag_prefix(self) -> str:
        return f"--{self.role}"

    def url_identities(self) -> tuple[str | None, ...]:
        """One cache identity (or None: the URL's own) per URL."""
        return self.identities or (None,) * len(self.urls)

    def max_connections(self, capabilities: Capabilities) -> int:
        """The HTTP connections a backend of this endpoint keeps: twice its concurrency."""
        concurrency = self.concurrency or capabilities.max_concurrency or 512
        return max(8, concurrency * 2)

    def engine_config(self) -> EngineConfig:
        """The engine's scheduling policy (the budget is the run's, shared by every role: see
        `engine.budget.Budget`)."""
        return EngineConfig(
            max_concurrency=self.concurrency,
            max_batch_size=self.batch_size,
            prompt_lists=self.prompt_lists,
            chat_template=self.chat_template,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            rate_window_s=self.rate_window_s,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            seed=self.seed,
        )


@dataclass(frozen=True, slots=True)
class EngineSetSpec:
    """The engines of one run: an endpoint per role and what they share.

    `cache_path`: the response cache file (None: no cache). `prices_path`: a JSON price table
    extending the built-in one. `log_dir`: where servers started here write their logs (None:
    temporary files). `shared_ledger`: one ledger for every engine (a run's usage and budget are
    counted once); False gives each engine its own (the estimate check compares roles).
    """

    endpoints: tuple[EndpointSpec, ...]
    cache_path: Path | None = None
    prices_path: Path | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    log_dir: Path | None = None
    shared_ledger: bool = True

    def __post_init__(self) -> None:
        roles = [endpoint.role for endpoint in self.endpoints]
        if len(set(roles)) != len(roles):
            raise ValueError(f"each role needs one endpoint; got {roles}")

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(endpoint.role for endpoint in self.endpoints)
