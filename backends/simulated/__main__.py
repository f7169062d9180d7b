"""Command line: run the simulated server until interrupted.

    python -m backends.simulated --port 8000 --max-num-seqs 256 --time-scale 10

Prints the base URL (e.g. "http://127.0.0.1:8000") on one line once it is listening; logs go to
stderr. `--config-json` gives a whole config (as `SimulatedServerConfig.to_dict` writes it);
flags given explicitly override it. The API key, if any, is read from the environment variable
named by `--api-key-env`, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from backends.errors import ConfigError, GpoError
from backends.simulated.answer_key import AnswerKey
from backends.simulated.config import OutputLengths, SimulatedServerConfig
from backends.simulated.server import SimulatedServer

_TOP_LEVEL_FLAGS = {
    "port": "port",
    "model": "model",
    "max_model_len": "max_model_len",
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "block_size": "block_size",
    "kv_cache_blocks": "kv_cache_blocks",
    "step_overhead_s": "step_overhead_s",
    "decode_time_per_seq_s": "decode_time_per_seq_s",
    "prefill_time_per_token_s": "prefill_time_per_token_s",
    "time_scale": "time_scale",
    "embedding_dim": "embedding_dim",
    "batch_delay_s": "batch_delay_s",
}
_RATE_FLAGS = {
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "burst_fraction": "burst_fraction",
}
_FAULT_FLAGS = {
    "fault_server_error": "server_error",
    "fault_connection_reset": "connection_reset",
    "fault_hang": "hang",
    "fault_malformed_json": "malformed_json",
    "fault_truncated_body": "truncated_body",
    "fault_slow_body": "slow_body",
    "slow_body_seconds": "slow_body_seconds",
    "hang_seconds": "hang_seconds",
    "fault_seed": "seed",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backends.simulated",
        allow_abbrev=False,
        description="A simulated vLLM-like OpenAI-compatible server (loopback only).",
    )
    add = parser.add_argument
    add("--config-json", help="a whole config as JSON (keys of SimulatedServerConfig)")
    add("--port", type=int, help="TCP port on 127.0.0.1 (0: a free port)")
    add("--model", help="the served model name")
    add("--max-model-len", type=int)
    add("--max-num-seqs", type=int)
    add("--max-num-batched-tokens", type=int)
    add("--block-size", type=int)
    add("--kv-cache-blocks", type=int)
    add("--no-prefix-caching", action="store_true")
    add("--step-overhead-s", type=float)
    add("--decode-time-per-seq-s", type=float)
    add("--prefill-time-per-token-s", type=float)
    add("--output-lengths", help="fixed:N, uniform:LOW:HIGH or lognormal:MEAN:SIGMA")
    add("--time-scale", type=float, help="simulated seconds per real second")
    add("--zero-latency", action="store_true", help="answer at once, bypassing the step model")
    add("--embedding-dim", type=int)
    add("--batch-delay-s", type=float, help="simulated seconds a Batch API batch takes")
    add("--rpm", type=int, help="requests per minute (API mode)")
    add("--tpm", type=int, help="tokens per minute (API mode)")
    add("--burst-fraction", type=float, help="bucket capacity as a fraction of the limit")
    add("--api-key-env", help="name of an environment variable holding the required API key")
    for flag in _FAULT_FLAGS:
        kind = int if flag == "fault_seed" else float
        add("--" + flag.replace("_", "-"), type=kind)
    add("--answer-key", help="JSON file {question: gold answer}")
    add("--log-level", default="WARNING")
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatedServerConfig:
    """The config the flags describe (explicit flags override --config-json)."""
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env: environment variable {args.api_key_env} is not set")
    base: dict[str, Any] = {}
    if args.config_json:
        try:
            base = orjson.loads(args.config_json)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from exc
        if not isinstance(base, dict):
            raise ConfigError("--config-json must be a JSON object")
    config = SimulatedServerConfig.from_dict(base, api_key=api_key)
    changes: dict[str, Any] = {
        field: getattr(args, flag)
        for flag, field in _TOP_LEVEL_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if args.no_prefix_caching:
        changes["enable_prefix_caching"] = False
    if args.zero_latency:
        changes["zero_latency"] = True
    if args.output_lengths:
        changes["output_lengths"] = OutputLengths.parse(args.output_lengths)
    rates = {f: getattr(args, a) for a, f in _RATE_FLAGS.items() if getattr(args, a) is not None}
    if rates:
        changes["rate_limits"] = dataclasses.replace(config.rate_limits, **rates)
    faults = {f: getattr(args, a) for a, f in _FAULT_FLAGS.items() if getattr(args, a) is not None}
    if faults:
        changes["faults"] = dataclasses.replace(config.faults, **faults)
    return dataclasses.replace(config, **changes)


async def serve(config: SimulatedServerConfig, answer_key: AnswerKey | None) -> None:
    """Run until SIGINT or SIGTERM, printing the URL once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with SimulatedServer(config, answer_key=answer_key) as server:
        print(server.url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
        answer_key = AnswerKey.from_json_file(args.answer_key) if args.answer_key else None
    except GpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, answer_key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
