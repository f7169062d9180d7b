"""Chat templates: render a conversation into the single prompt string a model actually reads.

An OpenAI-compatible server applies the model's template to `/v1/chat/completions` itself, but it
takes one conversation per HTTP call. Rendering the template on the client lets the engine send
many conversations as one prompt list to `/v1/completions`, which is what makes a single Python
client fast enough to keep a server's batch full. The rendering must match the server's template
exactly, so only named, well-known templates are offered; the simulated server uses `chatml`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backends.errors import ConfigError
from backends.protocol import Message


def render_chatml(messages: Sequence[Message]) -> str:
    """ChatML (SmolLM2, Qwen and many others), ending with an open assistant turn."""
    parts = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def render_llama2(messages: Sequence[Message]) -> str:
    """Llama-2-chat's `[INST]` format (the paper's scorer).

    A system turn joins the first user turn.
    """
    system = ""
    out: list[str] = []
    pending_user: str | None = None
    for role, content in messages:
        if role == "system":
            system = f"<<SYS>>\n{content}\n<</SYS>>\n\n"
        elif role == "user":
            pending_user = system + content
            system = ""
        else:
            out.append(f"<s>[INST] {(pending_user or '').strip()} [/INST] {content.strip()} </s>")
            pending_user = None
    if pending_user is not None:
        out.append(f"<s>[INST] {pending_user.strip()} [/INST]")
    return "".join(out)


def render_llama3(messages: Sequence[Message]) -> str:
    """Llama-3 instruct header format, ending with an open assistant header."""
    parts = ["<|begin_of_text|>"]
    for role, content in messages:
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


CHAT_TEMPLATES: dict[str, Callable[[Sequence[Message]], str]] = {
    "chatml": render_chatml,
    "llama2": render_llama2,
    "llama3": render_llama3,
}


def get_chat_template(name: str) -> Callable[[Sequence[Message]], str]:
    """The renderer called `name`; a clear error lists the known ones."""
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(CHAT_TEMPLATES))
        raise ConfigError(f"unknown chat template {name!r}; known templates: {known}") from None
