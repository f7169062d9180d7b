"""What identifies the model behind a served name, so that another model never answers from cache.

A cache key holds the endpoint's identity (`Backend.identity`: its URL, or the stable name of a
server started here, and the model's name). A name says little: the same name can be served
with other weights or another chat template, and the cache would hand back the old model's
answers. So the identity also carries a fingerprint (`fingerprint`) of what the server shows
about the model (`engine.server_discovery.ServerFacts.model_identity`: vLLM's `root` and
`max_model_len`, llama.cpp's template digest, model path and size) and, for servers started
here, of the weights themselves (`weights_digest`). The same server restarted, on any port or
URL (a resumed run keeps its old URL's identity, `gpo.resume`), shows the same facts and hits
its cache; new weights or a new template miss it.

Not part of it:

- a hosted API's `system_fingerprint`: it comes with each answer, after the key was needed, and
  OpenAI changes it with any change of its serving configuration (several times a month, and
  not always with a change of answers). Keying on it would make a resumed run buy again every
  answer it holds whenever it rotates, and a hosted model's weights are named by its dated
  model name anyway. It is recorded instead (`OpenAICompatibleBackend.system_fingerprints`, in
  the engine's description in run records), so a change is visible.

The chat template is in the identity wherever it can be seen: the one llama.cpp's `/props`
shows, the template files of a model directory on this machine (`template_digest`: a vLLM whose
`root` is local), and the one the client renders chats with (`--ROLE-chat-template` from a file
or a name: `with_client_template`), since those prompts are what the model reads.

Weights are hashed in full (BLAKE2b, in a thread) once per file: the digest is remembered by
(path, size, modification time) in `file-hashes.json` beside the other caches of gpo-engine
(`$XDG_CACHE_HOME/gpo-engine`, or `GPO_HASH_MEMO` to put it elsewhere), so a model is read once
per machine, not once per run.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from backends.chat_template import ChatTemplate

HASH_MEMO_ENV = "GPO_HASH_MEMO"
MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".jinja")
MODEL_FILE_NAMES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "tokenizer.model",
)
"""A model directory's files that decide its answers (weights, configuration, tokenizer and
template); the rest (READMEs, licences, images) does not."""
TEMPLATE_FILE_NAMES = ("tokenizer_config.json", "chat_template.json", "chat_template.jinja")

_memo_lock = threading.Lock()


def fingerprint(facts: Mapping[str, Any]) -> str | None:
    """A short digest of `facts` (None when there are none: the identity stays the name's)."""
    if not facts:
        return None
    canonical = orjson.dumps(dict(facts), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def hash_memo_path() -> Path:
    """Where file digests are remembered: `GPO_HASH_MEMO`, else beside gpo-engine's caches."""
    explicit = os.environ.get(HASH_MEMO_ENV)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "gpo-engine" / "file-hashes.json"


def _read_memo(path: Path) -> dict[str, str]:
    try:
        memo = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(path: Path, memo: dict[str, str]) -> None:
    """Best effort: a memo that cannot be written only costs a hash next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(orjson.dumps(memo))
        partial.replace(path)
    except OSError:
        pass


def file_digest(path: Path) -> str:
    """The BLAKE2b digest of the file at `path`, hashed once per (path, size, mtime)."""
    resolved = path.resolve()
    stat = resolved.stat()
    memo_key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = hash_memo_path()
    with _memo_lock:
        known = _read_memo(memo_path).get(memo_key)
    if isinstance(known, str):
        return known
    with resolved.open("rb") as handle:
        digest = hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    with _memo_lock:
        memo = _read_memo(memo_path)
        memo[memo_key] = digest
        _write_memo(memo_path, memo)
    return digest


def model_files(source: Path) -> list[Path]:
    """The files that make up the model at `source`: the file itself, or a directory's weights,
    configuration, tokenizer and template files (not in subdirectories), sorted."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        return []
    return sorted(
        entry
        for entry in source.iterdir()
        if entry.is_file()
        and (entry.suffix in MODEL_FILE_SUFFIXES or entry.name in MODEL_FILE_NAMES)
    )


def weights_digest(source: str | Path | None) -> str | None:
    """A digest of the model files at `source` (a GGUF file or a model directory), or None when
    `source` is not a model on this machine (a hub name served by a remote server)."""
    if source is None:
        return None
    root = Path(source)
    files = model_files(root)
    if not files:
        return None
    parts = [(str(file.relative_to(root)) if file != root else file.name, file_digest(file))
             for file in files]  # fmt: skip
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


def template_digest(root: str | None) -> str | None:
    """A digest of the chat template files of the model directory `root` when it is on this
    machine (small files, read each time), else None."""
    if root is None or not Path(root).is_dir():
        return None
    parts = []
    for name in TEMPLATE_FILE_NAMES:
        try:
            parts.append((name, (Path(root) / name).read_bytes()))
        except OSError:
            continue
    if not parts:
        return None
    canonical = orjson.dumps([(name, data.hex()) for name, data in parts])
    return hashlib.blake2b(canonical, digest_size=12).hexdigest()


def with_client_template(identity: str, template: ChatTemplate | None) -> str:
    """`identity` for an engine that renders chats with `template` itself (None: it does not,
    or only learns the server's template later, which the server's identity covers)."""
    if template is None:
        return identity
    text = template.template if template.template is not None else f"named:{template.source}"
    canonical = orjson.dumps([text, template.bos_token, template.eos_token])
    return f"{identity}|template={hashlib.blake2b(canonical, digest_size=8).hexdigest()}"


def server_record(backend: object) -> dict[str, Any]:
    """What `backend`'s server said about itself, and the `system_fingerprint`s its answers
    carried, for run records ({} for a backend that keeps neither)."""
    record: dict[str, Any] = {}
    facts = getattr(backend, "server_facts", None)
    if facts:
        record["server"] = dict(facts)
    fingerprints = getattr(backend, "system_fingerprints", None)
    if fingerprints:
        record["system_fingerprints"] = list(fingerprints)
    return record
