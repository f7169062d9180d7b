"""What a server's rate-limit headers say: the limit, what remains and when it is whole again.

Hosted APIs describe their limits on every answer, each in its own dialect; `read_rate_limits`
turns any of them into one `RateLimitReport` (per budget, requests and tokens: a `LimitReading`
of limit, remaining and seconds until the budget is full again), which `engine.header_pacing`
uses to pace calls. Dialects read (header names are case-insensitive):

- OpenAI (and Groq, Fireworks, vLLM-compatible gateways, the simulated server in API mode):
  `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests`
  and the same for `-tokens`; resets are Go-style durations (`6m0s`, `1s`, `20ms`,
  `1h2m3.5s`, `7.66s`, `250us`).
- Anthropic: `anthropic-ratelimit-requests-limit` / `-remaining` / `-reset` and the same for
  `tokens` (and `input-tokens` / `output-tokens`, read as tokens when `tokens` is absent);
  resets are RFC 3339 instants (`2024-06-01T12:00:30Z`).
- Together-style: `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (requests,
  reset in seconds) and `x-tokenlimit-limit` / `x-tokenlimit-remaining`.
- Wait hints: `retry-after-ms` (milliseconds), `retry-after` (seconds or an HTTP date).

A reset value may be a duration, plain seconds (`1`, `0.5`, `30s`), a Unix timestamp (seconds,
or milliseconds), an HTTP date or an RFC 3339 instant; instants become seconds from `now`
(negative: already past, read as 0). A value that is none of these is ignored, never an error:
pacing falls back to the client's own buckets.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_UNIX_S_FROM = 1e9
"""A plain number this large is an instant (Unix seconds, 2001 on), not a duration."""
_UNIX_MS_FROM = 1e12


@dataclass(frozen=True, slots=True)
class LimitReading:
    """One budget as the server described it: `remaining` units now, full again (`limit`, when
    sent) in `reset_s` seconds (None when not sent)."""

    remaining: float
    reset_s: float | None = None
    limit: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitReport:
    """Everything one answer's headers said about the limits; None where nothing was said."""

    requests: LimitReading | None = None
    tokens: LimitReading | None = None
    retry_after_s: float | None = None

    @property
    def empty(self) -> bool:
        return self.requests is None and self.tokens is None and self.retry_after_s is None


def parse_duration(value: str) -> float | None:
    """A Go-style duration ("6m0s", "1h2m3.5s", "20ms") or plain seconds ("1.5") as seconds."""
    text = value.strip().lower()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) and number >= 0 else None
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def parse_reset(value: str | None, now_epoch: float) -> float | None:
    """Seconds from `now_epoch` until the instant or after the duration `value` names."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    seconds = parse_duration(text)
    if seconds is not None:
        if seconds >= _UNIX_MS_FROM:
            return max(0.0, seconds / 1000.0 - now_epoch)
        if seconds >= _UNIX_S_FROM:
            return max(0.0, seconds - now_epoch)
        return seconds
    instant = _parse_instant(text)
    return None if instant is None else max(0.0, instant - now_epoch)


def _parse_instant(text: str) -> float | None:
    """An RFC 3339 / ISO 8601 instant or an HTTP date as a Unix timestamp."""
    try:
        when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _reading(
    headers: Mapping[str, str], names: tuple[str, str, str], now_epoch: float
) -> LimitReading | None:
    """The (limit, remaining, reset) headers `names` as a reading; None without `remaining`."""
    limit_name, remaining_name, reset_name = names
    remaining = _number(headers.get(remaining_name))
    if remaining is None:
        return None
    return LimitReading(
        remaining, parse_reset(headers.get(reset_name), now_epoch), _number(headers.get(limit_name))
    )


def _triple(prefix: str, kind: str, suffix_style: bool) -> tuple[str, str, str]:
    if suffix_style:
        return (f"{prefix}-limit-{kind}", f"{prefix}-remaining-{kind}", f"{prefix}-reset-{kind}")
    return (f"{prefix}-{kind}-limit", f"{prefix}-{kind}-remaining", f"{prefix}-{kind}-reset")


def _dialect_names(kind: str) -> list[tuple[str, str, str]]:
    """Header names (limit, remaining, reset) for budget `kind`, most specific dialect first."""
    names = [_triple("x-ratelimit", kind, True), _triple("anthropic-ratelimit", kind, False)]
    if kind == "requests":
        names.append(("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"))
    else:
        names.append(_triple("anthropic-ratelimit", "input-tokens", False))
        names.append(_triple("anthropic-ratelimit", "output-tokens", False))
        names.append(("x-tokenlimit-limit", "x-tokenlimit-remaining", "x-tokenlimit-reset"))
    return names


def retry_after_s(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """The server's wait hint: `retry-after-ms` first (finer), else `retry-after`."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    instant = _parse_instant(value.strip())
    return None if instant is None else max(0.0, instant - now_epoch)


def read_rate_limits(headers: Mapping[str, str], now_epoch: float) -> RateLimitReport:
    """The limits an answer's `headers` describe, in any dialect above (names any case)."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    found: dict[str, LimitReading | None] = {}
    for kind in ("requests", "tokens"):
        found[kind] = next(
            (
                reading
                for names in _dialect_names(kind)
                if (reading := _reading(lowered, names, now_epoch)) is not None
            ),
            None,
        )
    return RateLimitReport(found["requests"], found["tokens"], retry_after_s(lowered, now_epoch))


def is_rate_limit_header(name: str) -> bool:
    """True for a header `read_rate_limits` reads (so a transport can hand over only those)."""
    lowered = name.lower()
    return lowered.startswith(("x-ratelimit", "anthropic-ratelimit", "x-tokenlimit", "retry-after"))
