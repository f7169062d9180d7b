"""Chat templates: render a conversation into the single prompt string a model actually reads.

An OpenAI-compatible server applies the model's template to `/v1/chat/completions` itself, but it
takes one conversation per HTTP call. Rendering the template on the client lets the engine send
many conversations as one prompt list to `/v1/completions`, which is what makes a single Python
client fast enough to keep a server's batch full. The rendering must equal the server's exactly,
or the fast path silently changes what the model reads (SmolLM2's own template adds a default
system turn when a chat has none; a hand-written ChatML does not, and scores halved). So:

- The template is the model's own Jinja source (`load_chat_template`): from a Hugging Face model
  directory (`chat_template.jinja`, else `tokenizer_config.json`'s "chat_template"), from a GGUF
  file's metadata (`tokenizer.chat_template`, read with the `gguf` package when installed, else
  with llama-cpp-python's vocab-only loader), or from a `.jinja` file given by the user. The
  model's BOS and EOS token texts come from the same place.
- It is rendered as the ecosystem renders it: with transformers' own `render_jinja_template`
  (what `tokenizer.apply_chat_template` calls) when transformers is installed; otherwise with
  jinja2 configured as transformers configures it (an `ImmutableSandboxedEnvironment` with
  `trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that does not
  escape HTML, `raise_exception` and `strftime_now` globals, `bos_token`/`eos_token` variables)
  and always `add_generation_prompt=True`. transformers is preferred because templates on the Hub
  are written against it; the jinja2 path reproduces it for installs without it.
- The hand-written `chatml`, `llama2` and `llama3` renderers remain as named approximations: the
  simulated server speaks `chatml`, and old runs name them. They carry no guarantee; the engine
  verifies every template against the live server before use (`engine.chat_render`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from backends.protocol import Message

SERVER_TEMPLATE = "server"
"""`--ROLE-chat-template server`: the template of the model the managed server loaded."""


def render_chatml(messages: Sequence[Message]) -> str:
    """ChatML (SmolLM2, Qwen and many others), ending with an open assistant turn.

    A hand-written approximation: no default system turn, unlike SmolLM2's and Qwen's own.
    """
    parts = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def render_llama2(messages: Sequence[Message]) -> str:
    """Llama-2-chat's `[INST]` format (the paper's scorer); a hand-written approximation.

    A system turn joins the first user turn. The `<s>` it writes is a BOS the server may add again.
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
    """Llama-3 instruct header format, ending with an open assistant header; hand-written.

    It writes `<|begin_of_text|>` (the BOS) itself; the model's own template may also add a
    default system turn with dates, which this does not.
    """
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
"""Hand-written approximations, kept by name; used only after the server agrees with them."""

_HAND_WRITTEN_BOS = {"llama2": "<s>", "llama3": "<|begin_of_text|>"}


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """A model's chat template and the special-token texts it may print.

    Calling it renders a conversation with `add_generation_prompt=True`. `source` says where it
    came from, for run records and messages; `hand_written` marks the named approximations.
    """

    source: str
    template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    hand_written: Callable[[Sequence[Message]], str] | None = None

    def __call__(self, messages: Sequence[Message]) -> str:
        if self.hand_written is not None:
            return self.hand_written(messages)
        assert self.template is not None
        chat = [{"role": role, "content": content} for role, content in messages]
        try:
            return _render(self.template, chat, self.bos_token, self.eos_token)
        except Exception as error:  # a template's own raise_exception, or a broken template
            raise ConfigError(f"chat template {self.source}: {error}") from None


def _render(template: str, chat: list[dict[str, str]], bos: str, eos: str) -> str:
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        return _jinja_template(template).render(
            messages=chat, add_generation_prompt=True, bos_token=bos, eos_token=eos
        )
    rendered, _ = render_jinja_template(
        [chat], chat_template=template, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )
    return rendered[0]


@lru_cache(maxsize=16)
def _jinja_template(source: str) -> Any:
    """jinja2 set up as transformers' `_compile_jinja_template` sets it up."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
            sort_keys=sort_keys,
        )  # fmt: skip

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(source)


def _token_text(value: object) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _from_model_dir(directory: Path) -> ChatTemplate:
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    jinja_path = directory / "chat_template.jinja"
    template: Any = None
    if jinja_path.is_file():
        template = jinja_path.read_text(encoding="utf-8")
    else:
        template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one is what servers use
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        raise ConfigError(
            f"{directory}: no chat template (neither chat_template.jinja nor a "
            "'chat_template' in tokenizer_config.json)"
        )
    return ChatTemplate(
        source=str(jinja_path if jinja_path.is_file() else config_path),
        template=template,
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
    )


def _from_jinja_file(path: Path) -> ChatTemplate:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read chat template {path}: {error}") from None
    # A template beside its tokenizer_config.json takes the model's BOS/EOS from it.
    config_path = path.parent / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    return ChatTemplate(
        source=str(path),
        template=text,
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
    )


def _from_gguf(path: Path) -> ChatTemplate:
    from backends.gguf_metadata import read_chat_metadata

    template, bos, eos = read_chat_metadata(path)
    if not template:
        raise ConfigError(f"{path}: the GGUF has no tokenizer.chat_template in its metadata")
    return ChatTemplate(source=str(path), template=template, bos_token=bos, eos_token=eos)


def load_chat_template(spec: str) -> ChatTemplate:
    """The template named or pointed to by `spec`: a hand-written name (`chatml`, `llama2`,
    `llama3`), a model directory, a `.gguf` file, or a Jinja file. A clear error otherwise."""
    if spec in CHAT_TEMPLATES:
        return ChatTemplate(
            source=f"{spec} (hand-written)",
            bos_token=_HAND_WRITTEN_BOS.get(spec, ""),
            hand_written=CHAT_TEMPLATES[spec],
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_model_dir(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _from_gguf(path)
        return _from_jinja_file(path)
    known = ", ".join(sorted(CHAT_TEMPLATES))
    raise ConfigError(
        f"chat template {spec!r}: not a model directory, .gguf or .jinja file, "
        f"nor '{SERVER_TEMPLATE}' "
        f"or a hand-written name ({known})"
    )


def get_chat_template(name: str) -> ChatTemplate:
    """The template `name` names or points to (see `load_chat_template`); callable on messages."""
    return load_chat_template(name)
