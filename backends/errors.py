"""The project's one exception hierarchy.

Every layer raises subclasses of `GpoError`; each message says what was wrong and where (file and
line for data, flag or key for configuration, endpoint for transport) and never contains a
credential. Transport errors carry `retryable` so that retry policy, which lives in the engine,
needs no knowledge of HTTP.
"""

from __future__ import annotations


class GpoError(Exception):
    """Root of every error the project raises on purpose."""


class ConfigError(GpoError):
    """A configuration value, flag or environment variable is invalid or missing."""


class DataError(GpoError):
    """A data file is missing, empty or malformed; the message names the file and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class BackendError(GpoError):
    """A request to a model endpoint failed. `retryable` tells the engine whether to try again."""

    retryable: bool = True
    kind: str = "backend_error"

    def __init__(self, message: str, *, endpoint: str = "", status: int | None = None) -> None:
        super().__init__(f"{endpoint}: {message}" if endpoint else message)
        self.endpoint = endpoint
        self.status = status


class RateLimited(BackendError):
    """HTTP 429. `retry_after` (seconds) and `limits` come from the server's headers."""

    kind = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        retry_after: float | None = None,
        limits: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=429)
        self.retry_after = retry_after
        self.limits = limits or {}


class ServerError(BackendError):
    """HTTP 5xx: the server failed; usually transient."""

    kind = "server_error"


class RequestTimeout(BackendError):
    """No complete answer within the client's timeout."""

    kind = "timeout"


class ConnectionFailed(BackendError):
    """Connection refused, reset or closed before a complete answer."""

    kind = "connection"


class MalformedResponse(BackendError):
    """The server answered with a body that is not the JSON the protocol promises."""

    kind = "malformed"


class ClientRequestError(BackendError):
    """HTTP 4xx other than 429: the request itself is wrong and retrying cannot help."""

    retryable = False
    kind = "client_error"


class UnsupportedParameter(ClientRequestError):
    """HTTP 400: the model refuses one field of the request (`param`), e.g. `max_tokens` on
    reasoning models; the client re-sends without it (`backends.request_shape`)."""

    kind = "unsupported_parameter"

    def __init__(
        self, message: str, *, endpoint: str = "", status: int | None = None, param: str = ""
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=status)
        self.param = param


class AuthenticationError(ClientRequestError):
    """HTTP 401/403, or a hosted endpoint used without an API key."""

    kind = "auth"


class ContextLengthExceeded(ClientRequestError):
    """The prompt plus max_tokens is longer than the model's context window."""

    kind = "context_length"


class UnknownModel(ClientRequestError):
    """The endpoint does not serve the requested model."""

    kind = "unknown_model"


class Redirected(ClientRequestError):
    """HTTP 3xx: model calls never follow redirects (the key would travel to the new host); the
    endpoint's URL must be fixed instead, so the engine stops on the first one."""

    kind = "redirect"
