"""`gpo serve`: start a local model server, print its URL, keep it up until Ctrl-C.

Without options it serves the embedded SmolLM2 model with llama.cpp; `--vllm MODEL` runs vLLM
instead (`vllm serve MODEL` on a GPU, the CPU build from `gpo setup-local --vllm` without one;
`--vllm embedded` is SmolLM2 converted for vLLM), with further vLLM arguments after `--`. The
server binds 127.0.0.1 only. Several runs of `gpo optimize` / `gpo eval` can then share it with
`--scorer-url URL`, instead of each starting its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from backends.llamacpp import SMOLLM2_CONTEXT_TOKENS, EmbeddedModelServer, LlamaServerConfig
from backends.vllm_serve import ManagedVllmServer, VllmServeConfig
from gpo.endpoint_flags import BoundedNumber

EXIT_INTERRUPTED = 130


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="start a local model server (embedded SmolLM2, or vLLM) and keep it up until Ctrl-C",
        description="Start the embedded SmolLM2 model with llama.cpp, or `vllm serve MODEL`, on "
        "127.0.0.1, print its OpenAI base URL, and keep it up until Ctrl-C. vLLM arguments go "
        "after `--`, e.g. `gpo serve --vllm Qwen/Qwen2.5-7B-Instruct -- --max-num-seqs 128`.",
    )
    parser.add_argument(
        "--vllm",
        metavar="MODEL",
        help="serve MODEL with vLLM instead (`embedded`: SmolLM2 converted by `gpo setup-local "
        "--vllm`; the CPU build when no GPU is visible)",
    )
    parser.add_argument(
        "--port",
        type=BoundedNumber(int, 1, 65_535),
        metavar="N",
        help="port on 127.0.0.1 (default: a free one)",
    )
    parser.add_argument(
        "--gpus", metavar="IDS", help="CUDA_VISIBLE_DEVICES for vLLM, e.g. 0 or 2,3"
    )
    parser.add_argument(
        "--n-ctx",
        type=BoundedNumber(int, 1, 10_000_000),
        default=SMOLLM2_CONTEXT_TOKENS,
        metavar="TOKENS",
        help=f"context length of the embedded model (default {SMOLLM2_CONTEXT_TOKENS})",
    )
    parser.add_argument(
        "--threads",
        type=BoundedNumber(int, 1, 1_024),
        default=2,
        metavar="N",
        help="CPU threads of the embedded model (default 2)",
    )
    parser.add_argument(
        "--log", type=Path, metavar="PATH", help="server log file (default: a temporary file)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=BoundedNumber(float, 0, 86_400, inclusive=False),
        metavar="SECONDS",
        help="how long to wait for the server to answer (default 120; vLLM "
        "GPO_VLLM_STARTUP_TIMEOUT_S or 900)",
    )
    parser.add_argument(
        "vllm_args", nargs=argparse.REMAINDER, help="arguments for `vllm serve`, after `--`"
    )
    return parser


def _vllm_args(args: argparse.Namespace) -> tuple[str, ...]:
    rest = list(getattr(args, "vllm_args", None) or [])
    if rest and rest[0] == "--":
        rest = rest[1:]
    return tuple(rest)


def build_server(args: argparse.Namespace) -> EmbeddedModelServer | ManagedVllmServer:
    """The server `args` ask for, not yet started."""
    extra = _vllm_args(args)
    timeout = getattr(args, "startup_timeout", None)
    if args.vllm:
        if args.port is not None:
            extra = ("--port", str(args.port), *extra)
        config = VllmServeConfig(
            model=args.vllm,
            extra_args=extra,
            gpus=args.gpus,
            startup_timeout_s=timeout,
        )
        return ManagedVllmServer(config, log_path=args.log)
    if extra:
        raise ConfigError(f"gpo serve: {' '.join(extra)}: extra arguments need --vllm MODEL")
    if args.gpus is not None:
        raise ConfigError("gpo serve: --gpus applies to --vllm only")
    return EmbeddedModelServer(
        LlamaServerConfig(n_ctx=args.n_ctx, n_threads=args.threads),
        port=args.port,
        log_path=args.log,
        startup_timeout_s=timeout if timeout is not None else 120.0,
    )


def _announce(server: EmbeddedModelServer | ManagedVllmServer) -> None:
    process = server.process
    print(f"{process.name} is ready (pid {process.pid})", flush=True)
    print(f"  server:          {server.description}", flush=True)
    print(f"  OpenAI base URL: {server.url}", flush=True)
    print(f"  model:           {server.model_name}", flush=True)
    print(f"  concurrency:     {server.capabilities.max_concurrency}", flush=True)
    print(f"  log:             {process.log_path}", flush=True)
    print(f"  use it with:     --scorer-url {server.url} --optimizer-url {server.url}", flush=True)
    print("Press Ctrl-C to stop it.", flush=True)


async def serve(args: argparse.Namespace) -> int:
    """Start, announce, wait for Ctrl-C / SIGTERM or the server's own exit, stop."""
    server = build_server(args)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop_requested.set)
            handled.append(signum)
    stopper = asyncio.create_task(stop_requested.wait())
    starter = asyncio.create_task(server.start())
    try:
        await asyncio.wait({starter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not starter.done():
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
            print("interrupted before the server was ready", file=sys.stderr)
            return EXIT_INTERRUPTED
        starter.result()
        _announce(server)
        exited = asyncio.create_task(server.process.wait_exited())
        try:
            await asyncio.wait({stopper, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if not stopper.done():
            print(f"error: {server.process.describe_exit()}", file=sys.stderr)
            return 1
        print("stopping the server", flush=True)
        return 0
    finally:
        stopper.cancel()
        await server.stop()
        for signum in handled:
            loop.remove_signal_handler(signum)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))
