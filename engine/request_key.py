"""The cache key of a request: a hash of its canonical form, credentials left out.

Canonical form = endpoint identity (URL without credentials, model), the messages or prompt, and
every sampling parameter (not `purpose`, which labels the call for the server and does not change
what is asked), serialised by orjson with sorted keys (as DSPy's cache does). A sampled
request (temperature > 0) has a key only when it carries a `sample_index`: without one, two draws
would share an answer and sampling would silently become repetition.

The identity is scrubbed here too (userinfo, credential-like query parameters, known keys), once
per distinct identity, so no backend can put a credential into a key's input by mistake.
"""

from __future__ import annotations

import functools
import hashlib

import orjson

from backends.protocol import Request
from backends.redaction import redact_known, scrub_text


@functools.lru_cache(maxsize=256)
def public_identity(identity: str) -> str:
    """`identity` without credentials (computed once per identity: keys are a hot path)."""
    return redact_known(scrub_text(identity))


def is_cacheable(request: Request) -> bool:
    return request.params.temperature == 0.0 or request.sample_index is not None


def request_key(identity: str, request: Request) -> bytes | None:
    """A 20-byte digest naming the request, or None when it must not be cached."""
    if not is_cacheable(request):
        return None
    params = request.params
    canonical = (
        public_identity(identity),
        request.messages if request.messages is not None else request.prompt,
        request.is_chat,
        params.max_tokens,
        params.temperature,
        params.top_p,
        params.n,
        params.stop,
        params.seed,
        request.sample_index,
    )
    return hashlib.blake2b(orjson.dumps(canonical), digest_size=20).digest()
