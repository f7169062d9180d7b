"""Read a GGUF file's chat template and BOS/EOS token texts from its metadata.

llama.cpp's server renders chats with the template stored under `tokenizer.chat_template`, with
the texts of the tokens `tokenizer.ggml.bos_token_id` / `eos_token_id` as `bos_token` /
`eos_token`. Two readers, the first one installed wins: the `gguf` package (llama.cpp's own
pure-Python reader: `pip install gguf`), then llama-cpp-python loading the vocabulary only (no
weights), which is what the embedded model's server runs anyway.
"""

from __future__ import annotations

from pathlib import Path

from backends.errors import ConfigError

TEMPLATE_KEY = "tokenizer.chat_template"
BOS_KEY = "tokenizer.ggml.bos_token_id"
EOS_KEY = "tokenizer.ggml.eos_token_id"


def read_chat_metadata(path: Path) -> tuple[str, str, str]:
    """(template, bos text, eos text) of the GGUF at `path`; "" where the metadata has none."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        return _with_llama_cpp(path)
    return _with_gguf(path)


def _with_gguf(path: Path) -> tuple[str, str, str]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read GGUF metadata of {path}: {error}") from None
    fields = reader.fields

    def token_text(key: str) -> str:
        if key not in fields or "tokenizer.ggml.tokens" not in fields:
            return ""
        return str(fields["tokenizer.ggml.tokens"].contents(int(fields[key].contents())))

    template = fields[TEMPLATE_KEY].contents() if TEMPLATE_KEY in fields else ""
    return str(template or ""), token_text(BOS_KEY), token_text(EOS_KEY)


def _with_llama_cpp(path: Path) -> tuple[str, str, str]:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ConfigError(
            f"cannot read the chat template of {path}: install the `gguf` package "
            "(or llama-cpp-python, `gpo setup-local --llamacpp`)"
        ) from None
    try:
        model = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read GGUF metadata of {path}: {error}") from None
    try:
        template = model.metadata.get(TEMPLATE_KEY, "")
        texts = []
        for token_id in (model.token_bos(), model.token_eos()):
            texts.append(model._model.token_get_text(token_id) if token_id != -1 else "")
        return template, texts[0], texts[1]
    finally:
        model.close()
