"""The sampling fields of a request, fitted to what the endpoint's model accepts.

Modern hosted models refuse some of the fields every OpenAI-compatible server used to take:
reasoning models answer HTTP 400 to `max_tokens` ("Use 'max_completion_tokens' instead"), to a
`temperature` other than the default, and some to `n`. The error body names the field:

    {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model.
     Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
     "param": "max_tokens", "code": "unsupported_parameter"}}

`RequestShape` learns each refusal once per endpoint (one backend), says so once in the log, and
every later body is built without the field (or with `max_completion_tokens`); the client re-sends
the refused call. A refused `n` means the client asks for the choices one call at a time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.protocol import SamplingParams

logger = logging.getLogger(__name__)

REFUSAL_CODES = ("unsupported_parameter", "unsupported_value")
"""OpenAI's error codes for a field the model does not take, or a value it does not take."""
ADAPTABLE = ("max_tokens", "temperature", "top_p", "n", "seed")
"""Fields the client can do without: renamed (`max_tokens`) or left to the model's default."""
_QUOTED = re.compile(r"'([a-z_]+)'")


def refused_parameter(raw: bytes) -> str | None:
    """The field an HTTP 400 body says the model refuses (one of `ADAPTABLE`), or None."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    message = str(error.get("message") or "")
    code = str(error.get("code") or "")
    if code not in REFUSAL_CODES and not message.startswith("Unsupported "):
        return None
    param = error.get("param")
    if param in ADAPTABLE:
        return str(param)
    found = _QUOTED.search(message)
    return found.group(1) if found and found.group(1) in ADAPTABLE else None


@dataclass(slots=True)
class RequestShape:
    """What one endpoint's model was found to refuse, and the bodies that fit it."""

    endpoint: str = ""
    token_limit_field: str = "max_tokens"
    omitted: set[str] = field(default_factory=set)
    version: int = 0
    """How many refusals were learned: a call sent under an older version is re-sent."""

    @property
    def one_choice_per_call(self) -> bool:
        """The model refuses `n`: several choices come from separate calls."""
        return "n" in self.omitted

    def body(self, params: SamplingParams) -> dict[str, Any]:
        """The sampling fields of a call with these settings."""
        body: dict[str, Any] = {self.token_limit_field: params.max_tokens}
        for name, value in (
            ("temperature", params.temperature),
            ("top_p", params.top_p),
            ("n", params.n),
        ):
            if name not in self.omitted:
                body[name] = value
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None and "seed" not in self.omitted:
            body["seed"] = params.seed
        return body

    def learn(self, param: str | None) -> bool:
        """Fit later bodies to a refusal of `param`; False when there is nothing left to change
        (an unknown field, or one already fitted), so the error stands."""
        if param == "max_tokens" and self.token_limit_field == "max_tokens":
            self.token_limit_field = "max_completion_tokens"
            self.version += 1
            logger.warning(
                "%s: the model refuses max_tokens; sending max_completion_tokens instead",
                self.endpoint,
            )
            return True
        if param in ADAPTABLE and param != "max_tokens" and param not in self.omitted:
            self.omitted.add(param)
            self.version += 1
            consequence = {
                "n": "each choice is now asked for in a call of its own",
                "temperature": "answers now come at the model's default temperature",
            }.get(param, "the model's default is used")
            logger.warning(
                "%s: the model refuses %s; no longer sent (%s)", self.endpoint, param, consequence
            )
            return True
        return False
