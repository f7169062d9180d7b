"""Keeping credentials out of everything the project stores or prints.

- `scrub_url`: a URL without its userinfo (`user:key@`) and with the values of credential-like
  query parameters (`api_key`, `key`, `token`, `access_token`, ...) replaced; safe for logs,
  messages, cache identities and run-directory files. `scrub_text` does the same to every URL
  inside a free text.
- `looks_like_key`: whether a value given where a name or a path belongs is probably a key
  itself, so that it is refused without being echoed.
- The run's known secrets: every API key (or URL password) a backend loads is remembered with
  `remember_secret`, and `redact_known` replaces each of them in a text a server sent back, so a
  server that echoes the Authorization header cannot get the key into a cache, a record or a
  score. With no key loaded it costs one truth test.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from backends.protocol import Completion

REDACTED = "[redacted]"
# Shorter "keys" (EMPTY, none, dummy) are placeholders for local servers; replacing them in model
# answers would corrupt the answers and protect nothing.
MIN_SECRET_CHARS = 8

_CREDENTIAL_PARAM = re.compile(
    r"(^|_)(api_?key|apikey|key|token|access_token|id_token|refresh_token|auth|auth_token|"
    r"authorization|secret|client_secret|password|passwd|pwd|sig|signature|credentials?|"
    r"subscription_key|session|sessionid)$",
    re.IGNORECASE,
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{},;|]+")
# Well-known API key and token formats: a prefix, then at least 8 key characters.
_KEY_PREFIX = re.compile(
    r"^(?:(?:sk-|sk_|pk-|rk-|hf_|ghp_|gho_|ghs_|github_pat_|glpat-|xox[abpr]-|AKIA|AIza|r8_)"
    r"[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._~+/=-]{16,})"
)
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_\-.+/=:~]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

_known: set[str] = set()


def _scrub_pairs(text: str) -> str:
    """`a=1&api_key=x` -> `a=1&api_key=[redacted]`; other parameters untouched, byte for byte."""
    pieces = []
    for piece in text.split("&"):
        name, sep, _ = piece.partition("=")
        if sep and _CREDENTIAL_PARAM.search(unquote(name).replace("-", "_")):
            piece = f"{name}={REDACTED}"
        pieces.append(piece)
    return "&".join(pieces)


def scrub_url(url: str) -> str:
    """`url` without userinfo and with credential-like query (and fragment) values redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    query = _scrub_pairs(parts.query) if parts.query else parts.query
    fragment = _scrub_pairs(parts.fragment) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def scrub_text(text: str) -> str:
    """`text` with every URL in it scrubbed (see `scrub_url`)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: scrub_url(match.group(0)), text)


def url_password(url: str) -> str | None:
    """The secret part of a URL's userinfo (the password, else a lone user name), if any."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if "@" not in parts.netloc:
        return None
    userinfo = unquote(parts.netloc.rpartition("@")[0])
    return userinfo.partition(":")[2] or userinfo or None


def has_key_prefix(value: str) -> bool:
    """Whether `value` starts like a well-known key format (sk-..., hf_..., Bearer ...)."""
    return bool(_KEY_PREFIX.match(value.strip()))


def looks_like_key(value: str) -> bool:
    """Whether `value` is probably an API key or token rather than a name or a file path: a
    well-known key prefix, or a long run of letters and digits with no path or name shape."""
    text = value.strip()
    if _KEY_PREFIX.match(text):
        return True
    if len(text) < 20 or not _KEY_CHARS.match(text) or "/" in text:
        return False
    if text.startswith(("~", ".")) or re.search(r"\.[A-Za-z]{1,8}$", text):
        return False  # a path, or a file name with an extension
    if re.fullmatch(r"[A-Z0-9_]+", text) and "_" in text:
        return False  # an environment variable name such as AZURE_OPENAI_API_KEY_EASTUS2
    # A key has a long run of mixed letters and digits; names and paths have words.
    return any(
        re.search(r"[0-9]", run) and re.search(r"[A-Za-z]", run)
        for run in re.findall(r"[A-Za-z0-9]{20,}", text)
    )


def is_env_var_name(value: str) -> bool:
    """A plausible environment variable name (and not a key given in its place)."""
    return bool(_ENV_NAME.match(value)) and not looks_like_key(value)


def remember_secret(secret: str | None) -> None:
    """Add a key this run loaded to the texts `redact_known` removes."""
    if secret and len(secret) >= MIN_SECRET_CHARS:
        _known.add(secret)


def known_secrets() -> frozenset[str]:
    return frozenset(_known)


def redact_known(text: str) -> str:
    """`text` with every key this run loaded replaced by `[redacted]`."""
    if _known and text:
        for secret in _known:
            if secret in text:
                text = text.replace(secret, REDACTED)
    return text


def redact_completions(completions: Sequence[Completion]) -> Sequence[Completion]:
    """The answers with every known key removed from their texts; the same objects (no copy)
    when no key is loaded or none is echoed."""
    if not _known:
        return completions
    cleaned = list(completions)
    for index, completion in enumerate(cleaned):
        texts = tuple(redact_known(text) for text in completion.texts)
        if texts != completion.texts:
            cleaned[index] = dataclasses.replace(completion, texts=texts)
    return cleaned
