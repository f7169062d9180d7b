"""The endpoint flags of `gpo eval` and `gpo optimize`, and the one function that turns them into
an engine specification (`spec_from_args` -> `engine.endpoint_spec.EngineSetSpec`).

Each role gets an endpoint: `--ROLE-url` (one or several: several are spread by least outstanding
work), a managed `vllm serve` (`--ROLE-vllm MODEL`), or, when the role names no endpoint and
OPENAI_BASE_URL is unset, the embedded SmolLM2 model (shared by the roles) on the local server
`--local-server` names: vLLM where the machine runs it, else llama.cpp (`gpo.local_server`
chooses and sets `args.local_server` before the specification is built; unset means llama.cpp).

API keys are read from an environment variable (`--ROLE-api-key-env`, default OPENAI_API_KEY) or
a file (`--ROLE-api-key-file`), never from the command line, so they stay out of shell history,
process listings and the run directory; the specification holds the variable's name or the
file's path, never the key. A value given to `--ROLE-api-key-env` that is not a variable name,
or to `--ROLE-api-key-file` that names no file and looks like a key, is refused without being
echoed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backends.chat_template import CHAT_TEMPLATES, SERVER_TEMPLATE
from backends.redaction import is_env_var_name, looks_like_key
from engine.endpoint_spec import DEFAULT_KEY_ENV, ApiKeySource, EndpointSpec, EngineSetSpec
from engine.prefix_affinity import ROUTINGS

ROLES = ("scorer", "optimizer")


class _KeyEnvAction(argparse.Action):
    """`--ROLE-api-key-env NAME`: a variable name, never a key (which is refused unechoed)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        if not is_env_var_name(str(values)):
            parser.error(
                f"{option}: the value is not an environment variable name (not shown, in case "
                "it is a key); give the NAME of the variable that holds the key, e.g. "
                "OPENAI_API_KEY"
            )
        setattr(namespace, self.dest, values)


class _KeyFileAction(argparse.Action):
    """`--ROLE-api-key-file PATH`: a file that must exist; a missing one that looks like a key
    is refused without being echoed (it would otherwise reach config.json and the error)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        path = Path(values)
        if not path.exists():  # a pipe (<(pass show key)) is fine too
            shown = f"{path}" if not looks_like_key(str(path)) else "the value (not shown: a key?)"
            parser.error(
                f"{option}: {shown} does not exist; give the path of a file holding the key"
            )
        setattr(namespace, self.dest, path)


_CHAT_TEMPLATE_HELP = (
    "render chats client-side with the model's own Jinja template so they travel as prompt "
    "lists: a model directory, a .gguf or .jinja file, or 'server' (the model the server "
    "loaded); checked against the server before use (chat calls if it differs). chatml, "
    "llama2, llama3: hand-written approximations, checked the same way"
)


def _chat_template(value: str) -> str:
    """`--ROLE-chat-template`: `server`, a hand-written name, or a model dir / .gguf / .jinja."""
    if value == SERVER_TEMPLATE or value in CHAT_TEMPLATES or Path(value).expanduser().exists():
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a model directory, .gguf or .jinja file, '{SERVER_TEMPLATE}', nor a "
        f"hand-written template ({', '.join(sorted(CHAT_TEMPLATES))})"
    )


def _add_limit_arguments(group: Any, role: str) -> None:
    """The role's client-side rate limits (the fallback to the server's rate-limit headers)."""
    group.add_argument(
        f"--{role}-rpm",
        type=_number(float, 0, 1e9, inclusive=False),
        metavar="N",
        help="requests-per-minute limit (default: none; the fallback where the server sends "
        "no rate-limit headers)",
    )
    group.add_argument(
        f"--{role}-tpm",
        type=_number(float, 0, 1e12, inclusive=False),
        metavar="N",
        help="tokens-per-minute limit (default: none; the fallback where the server sends no "
        "rate-limit headers)",
    )


def add_endpoint_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """Flags for one role's endpoint and scheduling policy."""
    group = parser.add_argument_group(f"{role} endpoint")
    group.add_argument(
        f"--{role}-url",
        action="append",
        metavar="URL",
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (repeat for several "
        "servers). Default: OPENAI_BASE_URL if set, else the embedded local model.",
    )
    group.add_argument(
        f"--{role}-model",
        metavar="NAME",
        help="model name (default: the first one the endpoint lists)",
    )
    group.add_argument(
        f"--{role}-vllm",
        metavar="MODEL",
        help="start `vllm serve MODEL` for "
        "this role on a free loopback port and stop it at the end",
    )
    group.add_argument(
        f"--{role}-api-key-env",
        metavar="VAR",
        default="OPENAI_API_KEY",
        action=_KeyEnvAction,
        help="environment variable holding the API key (default OPENAI_API_KEY)",
    )
    group.add_argument(
        f"--{role}-api-key-file",
        metavar="PATH",
        type=Path,
        action=_KeyFileAction,
        help="file holding the API key",
    )
    group.add_argument(
        f"--{role}-concurrency",
        type=_number(int, 1, 100_000),
        metavar="N",
        help="sequences in flight, a fixed window (default: from the server's max_num_seqs "
        "where known, else found by measurement)",
    )
    group.add_argument(
        f"--{role}-batch-size",
        type=_number(int, 1, 100_000),
        default=32,
        metavar="N",
        help="prompts per /v1/completions call (default 32)",
    )
    group.add_argument(
        f"--{role}-no-prompt-lists",
        action="store_true",
        help="send one prompt per call (for servers that refuse prompt lists)",
    )
    group.add_argument(
        f"--{role}-chat-template",
        metavar="SOURCE",
        type=_chat_template,
        help=_CHAT_TEMPLATE_HELP,
    )
    _add_limit_arguments(group, role)
    _add_routing_argument(group, role)
    group.add_argument(
        f"--{role}-gpu-hour-usd",
        type=_number(float, 0, 1e6),
        metavar="USD",
        help="price of this role's server per GPU-hour (local servers; default: none, so "
        "unpriced unless --prices names the model)",
    )


def _add_routing_argument(group: Any, role: str) -> None:
    """`--ROLE-routing`: how several URLs of the role share calls (`engine.prefix_affinity`)."""
    group.add_argument(
        f"--{role}-routing",
        choices=ROUTINGS,
        default="affinity",
        help=f"how several --{role}-url replicas share calls: affinity (a prompt's prefix to the "
        "replica that has it cached, loads kept even; default) or least-loaded (when a router in "
        "front already routes by prefix)",
    )


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every role: cache, prices, retries, budgets."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--cache",
        type=Path,
        metavar="PATH",
        help="response cache file (default: cache.sqlite in the run directory)",
    )
    group.add_argument("--no-cache", action="store_true", help="do not cache answers")
    group.add_argument(
        "--local-server",
        choices=("auto", "vllm", "llamacpp"),
        help="the server of the embedded model, for roles that name no endpoint: vllm (its CPU "
        "build without a GPU), llamacpp, or auto (default, or GPO_LOCAL_SERVER): vLLM where it "
        "is installed and this machine runs it, else llama.cpp; a resumed run keeps its own",
    )
    group.add_argument(
        "--prices",
        type=Path,
        metavar="PATH",
        help="JSON price table extending the built-in one (default: the built-in one): "
        '{"MODEL": {"input_per_mtok": IN, "output_per_mtok": OUT}}, optionally '
        "cached_input_per_mtok (default: the input price), batch_input_per_mtok, "
        "batch_output_per_mtok, batch_cached_input_per_mtok (default: half the list price)",
    )
    group.add_argument(
        "--max-retries",
        type=_number(int, 0, 1_000),
        default=8,
        metavar="N",
        help="retries of a failed call (rate limit, timeout, server error) before its request "
        "fails; backoff with jitter, never sooner than Retry-After (default 8)",
    )
    group.add_argument(
        "--request-timeout",
        type=_number(float, 0, 7 * 86_400, inclusive=False),
        default=600.0,
        metavar="S",
        help="seconds before a call is abandoned and retried (default 600)",
    )
    group.add_argument(
        "--budget-usd",
        type=_number(float, 0, 1e9, inclusive=False),
        metavar="USD",
        help="stop cleanly once this many dollars are spent (default: no cap)",
    )
    group.add_argument(
        "--budget-tokens",
        type=_number(int, 1, 10**15),
        metavar="N",
        help="stop cleanly once this many tokens are spent (default: no cap)",
    )


MAX_TOKENS = 1_000_000
"""The most tokens a flag may ask one request to generate (more than any model's context)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BoundedNumber:
    """An argparse type: a finite `kind` (int or float) from `minimum` (excluded unless
    `inclusive`) to `maximum`. argparse names the flag in its error; the message names the
    allowed range."""

    kind: type
    minimum: float
    maximum: float
    inclusive: bool = True

    @property
    def allowed(self) -> str:
        low, high = _shown(self.minimum), _shown(self.maximum)
        return f"from {low} to {high}" if self.inclusive else f"above {low}, up to {high}"

    def __call__(self, text: str) -> Any:
        shown = text if len(text) <= 40 else text[:37] + "..."
        try:
            value = self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(
                f"{shown!r} is not {what} (allowed: {self.allowed})"
            ) from None
        below = value < self.minimum or (value == self.minimum and not self.inclusive)
        if not math.isfinite(value) or below or value > self.maximum:
            raise argparse.ArgumentTypeError(f"{shown!r} is out of range (allowed: {self.allowed})")
        return value


def _number(kind: type, minimum: float, maximum: float, *, inclusive: bool = True) -> BoundedNumber:
    return BoundedNumber(kind, minimum, maximum, inclusive)


def _shown(bound: float) -> str:
    return f"{int(bound):,}" if float(bound).is_integer() else f"{bound:,}"


def endpoint_kind(args: argparse.Namespace, role: str) -> str:
    """Which backend kind `role`'s flags ask for: a managed vLLM, URL(s) (`--ROLE-url`, else
    OPENAI_BASE_URL), or, when neither is given, the embedded model."""
    if getattr(args, f"{role}_vllm", None):
        return "vllm"
    if getattr(args, f"{role}_url", None) or os.environ.get("OPENAI_BASE_URL"):
        return "url"
    return "embedded"


def endpoint_spec_from_args(args: argparse.Namespace, role: str) -> EndpointSpec:
    """`role`'s endpoint as its `--ROLE-...` flags (and the shared retry and timeout flags)
    describe it. Reads no key and opens no socket."""
    kind = endpoint_kind(args, role)
    urls: Sequence[str] = ()
    serve = getattr(args, f"{role}_vllm", None)
    origin = None
    if kind == "url":
        urls = getattr(args, f"{role}_url", None) or [os.environ["OPENAI_BASE_URL"]]
    elif kind == "embedded":  # on the server `gpo.local_server` chose (llama.cpp when unset)
        local = getattr(args, "local_server", None) or "llamacpp"
        reason = getattr(args, "local_server_reason", None)
        origin = f"local server {local}" + (f": {reason}" if reason else "")
        if local == "vllm":
            kind, serve = "vllm", "embedded"
    # A resumed run whose endpoint moved keeps the old URLs' cache identities.
    identities = getattr(args, f"{role}_url_identities", None) or ()
    return EndpointSpec(
        role=role,
        kind=kind,
        urls=tuple(urls),
        identities=tuple(identities),
        model=getattr(args, f"{role}_model", None),
        serve=serve,
        origin=origin,
        api_key=ApiKeySource(
            env=getattr(args, f"{role}_api_key_env", DEFAULT_KEY_ENV),
            file=getattr(args, f"{role}_api_key_file", None),
        ),
        concurrency=getattr(args, f"{role}_concurrency", None),
        batch_size=getattr(args, f"{role}_batch_size", 32),
        prompt_lists=not getattr(args, f"{role}_no_prompt_lists", False),
        chat_template=getattr(args, f"{role}_chat_template", None),
        requests_per_minute=getattr(args, f"{role}_rpm", None),
        tokens_per_minute=getattr(args, f"{role}_tpm", None),
        max_retries=getattr(args, "max_retries", 8),
        request_timeout_s=getattr(args, "request_timeout", 600.0),
        gpu_hour_usd=getattr(args, f"{role}_gpu_hour_usd", None),
        routing=getattr(args, f"{role}_routing", "affinity"),
    )


def spec_from_args(
    args: argparse.Namespace, roles: Sequence[str], run_dir: Path | None
) -> EngineSetSpec:
    """The engines `args` ask for, for `roles`: the cache in `--cache`, else `run_dir`'s
    cache.sqlite (none with `--no-cache`); server logs in `run_dir`."""
    cache_path: Path | None = None
    if not getattr(args, "no_cache", False):
        cache_path = getattr(args, "cache", None) or (
            run_dir / "cache.sqlite" if run_dir is not None else None
        )
    return EngineSetSpec(
        tuple(endpoint_spec_from_args(args, role) for role in roles),
        cache_path=cache_path,
        prices_path=getattr(args, "prices", None) or None,
        budget_usd=getattr(args, "budget_usd", None),
        budget_tokens=getattr(args, "budget_tokens", None),
        log_dir=run_dir,
    )
