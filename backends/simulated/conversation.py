"""Recover the conversation from a prompt the simulated model reads.

The simulated server renders chat requests with ChatML (`backends.chat_template.render_chatml`),
and clients that batch conversations into `/v1/completions` send the same rendering, so a prompt
is either a ChatML conversation or plain completion text (treated as one user turn).
"""

from __future__ import annotations

from backends.protocol import Message

_TURN_START = "<|im_start|>"
_TURN_END = "<|im_end|>"


def parse_prompt(prompt: str) -> tuple[Message, ...]:
    """The (role, content) turns of a prompt, without the open assistant turn at its end."""
    if _TURN_START not in prompt:
        return (("user", prompt),)
    turns: list[Message] = []
    for segment in prompt.split(_TURN_START)[1:]:
        role, _, rest = segment.partition("\n")
        content, closed, _ = rest.partition(_TURN_END)
        if not closed and role == "assistant" and not content.strip():
            continue
        turns.append((role.strip(), content))
    return tuple(turns)


def user_turns(messages: tuple[Message, ...]) -> list[str]:
    return [content for role, content in messages if role == "user"]
