"""One way to build an engine: the CLI's flags become a typed specification (pure: no key read, no
socket), a specification's kind picks its factory from the backend registry (a kind registered
here is used without any other change), and `open_engines` builds the same engine for bench and
for the CLI when they describe the same server."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from backends.errors import ConfigError
from backends.protocol import Capabilities, Completion, Message, Request, SamplingParams
from backends.simulated import SimulatedServer, SimulatedServerConfig
from engine.backend_registry import (
    OpenContext,
    open_backend,
    register_backend,
    registered_kinds,
    unregister_backend,
)
from engine.endpoint_spec import ApiKeySource, EndpointSpec, EngineSetSpec
from gpo.endpoint_flags import add_endpoint_arguments, add_shared_arguments, spec_from_args
from gpo.endpoints import open_engines
from perf.engines import endpoint_spec as bench_endpoint_spec
from perf.servers import Endpoint
from tests.test_managed_process import FAKE_SERVER

SECRET = "sk-test-0123456789abcdefghijklmnop"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for role in ("scorer", "optimizer"):
        add_endpoint_arguments(parser, role)
    add_shared_arguments(parser)
    return parser.parse_args(argv)


# -- flags -> specification ------------------------------------------------------------------------


def test_flags_become_a_specification_without_reading_the_key(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)
    args = parse(
        "--scorer-url", "http://127.0.0.1:9/v1",
        "--scorer-url", "http://127.0.0.1:10/v1",
        "--scorer-model", "m",
        "--scorer-api-key-env", "MY_KEY",
        "--scorer-batch-size", "8",
        "--scorer-concurrency", "12",
        "--scorer-no-prompt-lists",
        "--scorer-chat-template", "chatml",
        "--scorer-rpm", "60",
        "--scorer-tpm", "1000",
        "--scorer-gpu-hour-usd", "2.5",
        "--optimizer-vllm", "Qwen/Qwen2.5-7B-Instruct",
        "--max-retries", "3",
        "--request-timeout", "30",
        "--budget-usd", "1.5",
        "--budget-tokens", "1000",
        "--prices", "prices.json",
    )  # fmt: skip
    spec = spec_from_args(args, ["scorer", "optimizer"], tmp_path)
    scorer, optimizer = spec.endpoints
    assert spec.roles == ("scorer", "optimizer")
    assert scorer == EndpointSpec(
        role="scorer",
        kind="url",
        urls=("http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"),
        model="m",
        api_key=ApiKeySource(env="MY_KEY"),
        concurrency=12,
        batch_size=8,
        prompt_lists=False,
        chat_template="chatml",
        requests_per_minute=60.0,
        tokens_per_minute=1000.0,
        max_retries=3,
        request_timeout_s=30.0,
        gpu_hour_usd=2.5,
    )
    assert optimizer.kind == "vllm" and optimizer.serve == "Qwen/Qwen2.5-7B-Instruct"
    assert optimizer.flag("model") == "--optimizer-model"
    assert spec.cache_path == tmp_path / "cache.sqlite" and spec.log_dir == tmp_path
    assert spec.prices_path == Path("prices.json")
    assert (spec.budget_usd, spec.budget_tokens) == (1.5, 1000)
    assert SECRET not in repr(spec)  # a name, never the key
    config = scorer.engine_config()  # the budget is the run's, shared: see open_engines
    assert (config.max_concurrency, config.max_batch_size, config.prompt_lists) == (12, 8, False)
    assert (config.requests_per_minute, config.tokens_per_minute) == (60.0, 1000.0)
    assert config.max_retries == 3
    assert scorer.api_key.read(scorer.flag_prefix) == SECRET


def test_no_endpoint_flag_means_the_embedded_model_and_base_url_means_a_url(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    spec = spec_from_args(parse("--no-cache"), ["scorer", "optimizer"], Path("run"))
    assert [e.kind for e in spec.endpoints] == ["embedded", "embedded"]
    assert spec.cache_path is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:7/v1")
    scorer = spec_from_args(parse(), ["scorer"], None).endpoints[0]
    assert (scorer.kind, scorer.urls) == ("url", ("http://127.0.0.1:7/v1",))


def test_a_key_file_is_named_by_path_and_read_only_when_built(tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    spec = spec_from_args(
        parse("--scorer-url", "http://127.0.0.1:9/v1", "--scorer-api-key-file", str(key_file)),
        ["scorer"],
        None,
    )
    source = spec.endpoints[0].api_key
    assert source.file == key_file and SECRET not in repr(spec)
    assert source.read("--scorer") == SECRET
    key_file.write_text("  \n")
    with pytest.raises(ConfigError, match=r"^--scorer-api-key-file: .* is empty$"):
        source.read("--scorer")


# -- the registry ----------------------------------------------------------------------------------


class FakeBackend:
    """A backend that answers every chat with "ok" and remembers being closed."""

    def __init__(self, model: str) -> None:
        self._model = model
        self.closed = False

    @property
    def identity(self) -> str:
        return f"fake://{self._model}"

    @property
    def model(self) -> str:
        return self._model

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(prompt_lists=False, completions=False, max_concurrency=4)

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        raise NotImplementedError

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        return Completion(("ok",), 3, 1)

    async def close(self) -> None:
        self.closed = True


@dataclasses.dataclass
class Opened:
    """What the fake kind's factory saw and did."""

    specs: list[EndpointSpec] = dataclasses.field(default_factory=list)
    backends: list[FakeBackend] = dataclasses.field(default_factory=list)
    server_starts: int = 0
    server_stops: int = 0

    @contextlib.asynccontextmanager
    async def server(self) -> AsyncIterator[Opened]:
        """A 'server' the roles of one set of engines share."""
        self.server_starts += 1
        try:
            yield self
        finally:
            self.server_stops += 1

    @contextlib.asynccontextmanager
    async def factory(self, spec: EndpointSpec, context: OpenContext) -> AsyncIterator[FakeBackend]:
        await context.shared("fake-server", self.server)
        backend = FakeBackend(spec.model or "fake-model")
        self.specs.append(spec)
        self.backends.append(backend)
        try:
            yield backend
        finally:
            await backend.close()


@pytest.fixture
def opened() -> Iterator[Opened]:
    """The kind "fake", registered for the test."""
    record = Opened()
    register_backend("fake")(record.factory)
    try:
        yield record
    finally:
        unregister_backend("fake")


async def test_a_registered_kind_is_opened_by_its_factory(opened) -> None:
    assert {"url", "embedded", "vllm", "fake"} <= set(registered_kinds())
    scorer = EndpointSpec(role="scorer", kind="fake", batch_size=4, concurrency=3)
    optimizer = EndpointSpec(role="optimizer", kind="fake", model="other")
    async with open_engines(EngineSetSpec((scorer, optimizer))) as engines:
        assert opened.specs == [scorer, optimizer]
        assert [engines[r].backend for r in ("scorer", "optimizer")] == opened.backends
        assert engines["scorer"].config == scorer.engine_config()
        assert engines["scorer"].ledger is engines["optimizer"].ledger  # one ledger per run
        assert engines["scorer"].budget is engines["optimizer"].budget  # and one budget
        assert opened.server_starts == 1  # shared by the roles
        answer = await engines["scorer"].generate(Request(messages=(("user", "hi"),)))
        assert answer.text == "ok"
    assert all(backend.closed for backend in opened.backends)
    assert opened.server_stops == 1


async def test_an_unknown_kind_is_a_config_error_naming_the_role() -> None:
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match=r"^scorer: unknown endpoint kind 'nope'; known: "):
            open_backend(EndpointSpec(role="scorer", kind="nope"), OpenContext(stack))


async def test_a_dollar_cap_with_an_unpriced_model_is_refused(opened) -> None:
    unpriced = EngineSetSpec((EndpointSpec(role="scorer", kind="fake"),), budget_usd=2.0)
    with pytest.raises(ConfigError, match=r"--budget-usd 2: the scorer model 'fake-model' has no"):
        async with open_engines(unpriced):
            pytest.fail("the engines opened")
    assert opened.backends and all(backend.closed for backend in opened.backends)
    assert opened.server_stops == opened.server_starts == 1
    priced = EngineSetSpec(
        (EndpointSpec(role="scorer", kind="fake", gpu_hour_usd=1.0),), budget_usd=2.0
    )
    async with open_engines(priced) as engines:
        assert engines["scorer"].budget.usd == 2.0


async def test_the_vllm_kind_starts_and_stops_a_managed_server(monkeypatch, tmp_path) -> None:
    if (Path(sys.executable).parent / "vllm").exists():
        pytest.skip("a real vllm is installed next to Python; it would be started")
    executable = tmp_path / "bin" / "vllm"
    executable.parent.mkdir()
    executable.write_text(f"#!{sys.executable}\n" + FAKE_SERVER)
    executable.chmod(0o755)
    monkeypatch.setenv("PATH", f"{executable.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # A GPU as nvidia-smi would report it, so the `vllm serve` path is taken, not the CPU build.
    nvidia_smi = executable.parent / "nvidia-smi"
    nvidia_smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559'\n")
    nvidia_smi.chmod(0o755)
    monkeypatch.setenv("GPO_VLLM_HOME", str(tmp_path / "no-vllm-here"))  # no CPU build either
    scorer = EndpointSpec(role="scorer", kind="vllm", serve="org/model")
    async with open_engines(EngineSetSpec((scorer,), log_dir=tmp_path)) as engines:
        backend = engines["scorer"].backend
        assert backend.model == "org/model"
        # Stable across ports: the name and what the server says about the model, no URL.
        assert backend.identity.startswith("managed-vllm|org/model|")
        assert "127.0.0.1" not in backend.identity
        url = backend.base_url
    assert (tmp_path / "vllm-scorer.log").exists()
    with pytest.raises(OSError):  # stopped with the engines
        urllib.request.urlopen(f"{url}/models", timeout=10)


# -- bench and the CLI build the same engine -------------------------------------------------------


async def test_bench_and_the_cli_build_the_same_engine_for_one_url(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(config) as server:
        url = f"{server.url}/v1"
        cli = spec_from_args(
            parse("--scorer-url", url, "--scorer-model", config.model, "--scorer-chat-template",
                  "chatml", "--no-cache"),
            ["scorer"],
            None,
        )  # fmt: skip
        bench_endpoint = Endpoint(url, config.model, "unused", "chatml", config.max_num_seqs, 1.0)
        bench = EngineSetSpec((bench_endpoint_spec(bench_endpoint),))
        async with open_engines(cli) as cli_engines, open_engines(bench) as bench_engines:
            by_cli, by_bench = cli_engines["scorer"], bench_engines["scorer"]
            assert by_cli.config == by_bench.config
            assert type(by_cli.backend) is type(by_bench.backend)
            # The CLI probes the server, so its identity adds what identifies the model.
            assert by_cli.backend.identity.startswith(by_bench.backend.identity + "|")
            assert by_cli.backend.model == by_bench.backend.model == config.model
            # What bench knows of its own server (max_num_seqs) is the only difference: the CLI
            # found a vLLM (lists work) that does not publish its max_num_seqs.
            assert by_bench.capabilities == Capabilities(
                max_concurrency=config.max_num_seqs, lists_confirmed=True
            )
            assert by_cli.capabilities == Capabilities(lists_confirmed=True)
            for engine in (by_cli, by_bench):
                request = Request(
                    messages=(("user", "Say ok."),), params=SamplingParams(max_tokens=4)
                )
                answer = await engine.generate(request)
                assert answer.completion_tokens > 0
