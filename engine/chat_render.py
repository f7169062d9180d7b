"""Which path a chat takes to the model: rendered on the client, or a `/v1/chat/completions` call.

A chat rendered here with the model's template (`backends.chat_template`) can travel in a prompt
list; but if the rendering differs from the server's, the model reads something else and nothing
says so. So a rendering is used only after the live server agreed with it
(`backends.server_rendering`): once per shape of conversation (its sequence of roles: templates
branch on "is there a system turn", "is this the first turn"), on the first conversation of that
shape, concurrent callers awaiting the same check. The first disagreement, or a server that
cannot be asked, switches the whole endpoint to chat calls for the rest of the run, with one
warning; `describe()` records the path taken for the run's config and summary.

`server` as the template asks the server which model it loaded: the backend's `model_source`
(set for servers started here: the embedded GGUF, a managed vLLM's model directory), else the
`root` of vLLM's `/v1/models` entry, when that is a path on this machine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backends.chat_template import SERVER_TEMPLATE, ChatTemplate, load_chat_template
from backends.errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    Redirected,
    UnknownModel,
)
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Backend, Message
from backends.server_rendering import CHECK_TIMEOUT_S, RenderingCheck, check_rendering

logger = logging.getLogger(__name__)

CHAT_CALLS = "chat calls"
RENDERED = "rendered prompts"


class ChatRenderer:
    """Renders chats for one endpoint once its server has agreed, else sends them as chats."""

    def __init__(self, spec: str, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend
        self.template: ChatTemplate | None = None
        if spec != SERVER_TEMPLATE:
            self.template = load_chat_template(spec)  # a bad path fails at start, naming it
        self._checks: dict[tuple[str, ...], asyncio.Future[RenderingCheck]] = {}
        self._fallback: str | None = None
        self._verified: dict[str, Any] = {}
        self._strip_bos = False

    async def prompt_for(self, messages: Sequence[Message]) -> str | None:
        """The prompt to send for `messages`, or None: send them as a chat call."""
        if self._fallback is not None:
            return None
        shape = tuple(role for role, _ in messages)
        check = self._checks.get(shape)
        if check is None:  # every caller, this one too, resumes alike: they batch together
            check = asyncio.ensure_future(self._check(messages))
            self._checks[shape] = check
        verdict = await asyncio.shield(check)
        if not verdict.matches or self._fallback is not None or self.template is None:
            return None
        rendered = self.template(messages)
        return rendered[len(self.template.bos_token) :] if verdict.strip_bos else rendered

    async def _check(self, messages: Sequence[Message]) -> RenderingCheck:
        failed = RenderingCheck(False, "none")
        try:
            if self.template is None:
                self.template = await self._server_template()
            backend = self._asked()
            if not isinstance(backend, OpenAICompatibleBackend):
                return self._fall_back(failed, "the backend cannot be asked for its rendering")
            rendered = self.template(messages)
            verdict = await check_rendering(backend, messages, rendered, self.template.bos_token)
        except (AuthenticationError, UnknownModel, Redirected):
            # The endpoint refuses everything: let the request itself fail once, as the engine
            # reports such errors (no verdict kept: a later request checks again).
            self._checks.pop(tuple(role for role, _ in messages), None)
            return RenderingCheck(True, "unchecked")
        except (BackendError, ConfigError) as error:
            return self._fall_back(failed, f"the check failed: {error}")
        if not verdict.matches:
            return self._fall_back(verdict, verdict.detail or "the server's rendering differs")
        self._verified[",".join(role for role, _ in messages)] = verdict.method
        self._strip_bos = self._strip_bos or verdict.strip_bos
        return verdict

    def _asked(self) -> Backend:
        """The backend whose server is asked: a pool of replicas names one of its own
        (`rendering_backend`; every replica serves the same model)."""
        return getattr(self.backend, "rendering_backend", self.backend)

    async def _server_template(self) -> ChatTemplate:
        backend = self._asked()
        source = getattr(backend, "model_source", None)
        if source is None and isinstance(backend, OpenAICompatibleBackend):
            for entry in await backend.list_model_entries(timeout_s=CHECK_TIMEOUT_S):
                root = entry.get("root")
                if entry.get("id") == backend.model and isinstance(root, str):
                    source = root
        if source is None or not Path(source).exists():
            raise ConfigError(
                "chat template 'server': the server does not say which model file it loaded "
                "(give the model directory, .gguf or .jinja file instead)"
            )
        return load_chat_template(source)

    def _fall_back(self, verdict: RenderingCheck, reason: str) -> RenderingCheck:
        if self._fallback is None:
            self._fallback = reason
            logger.warning(
                "chat template %s is not used for %s: %s; chats go to /v1/chat/completions "
                "one per call instead",
                self.template.source if self.template else self.spec,
                getattr(self.backend, "identity", "the endpoint"),
                reason,
            )
        return verdict

    def describe(self) -> dict[str, Any]:
        """The chat path in effect, for run records: which template, verified how, or why not."""
        record: dict[str, Any] = {
            "chat_template": self.template.source if self.template else self.spec,
            "chat_path": CHAT_CALLS if self._fallback or not self._verified else RENDERED,
        }
        if self._verified and not self._fallback:
            record["chat_template_verified_by"] = sorted(set(self._verified.values()))
            record["chat_template_strips_bos"] = self._strip_bos
        if self._fallback:
            record["chat_template_fallback"] = self._fallback
        return record
