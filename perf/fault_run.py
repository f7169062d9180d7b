"""One scoring evaluation of the fault matrix: a fresh simulated server (in a child process or in
this event loop) with a cell's faults, the real `Engine`, `ResponseCache` and `Evaluator` (the
engine built by `gpo.endpoints.open_engines`, as the CLI builds it), and the server restarts or
outages a cell calls for, sent as the evaluation passes thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from backends.protocol import Capabilities
from backends.simulated import (
    SimulatedServer,
    SimulatedServerConfig,
    parse_prometheus,
    start_server_process,
)
from benchmarks import Task
from engine.endpoint_spec import EndpointSpec, EngineSetSpec
from engine.engine import Engine
from engine.evaluator import EvaluationResult, Evaluator, SampleRecord
from gpo.endpoints import open_engines
from gpo.eval_job import summarise
from perf.fault_cells import EvaluationRun, MatrixSettings

logger = logging.getLogger(__name__)

# -- the server under test -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def simulated_server(
    config: SimulatedServerConfig, answer_key: dict[str, str], where: str
) -> AsyncIterator[str]:
    """A simulated server's base URL; in a child process or in this event loop."""
    if where == "inprocess":
        async with SimulatedServer(config, answer_key=answer_key) as server:
            yield server.url
        return
    if where != "process":
        raise ValueError(f"server must be 'process' or 'inprocess', got {where!r}")
    handle = await asyncio.to_thread(start_server_process, config, answer_key=answer_key)
    try:
        yield handle.url
    finally:
        await asyncio.to_thread(handle.stop)


async def _control(session: aiohttp.ClientSession, url: str, path: str, body: Any) -> None:
    async with session.post(f"{url}{path}", json=body) as response:
        await response.read()


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as response:
        return parse_prometheus(await response.text())


# -- one evaluation ------------------------------------------------------------------------------

ROLE = "scorer"


def scorer_spec(
    settings: MatrixSettings, config: SimulatedServerConfig, base_url: str
) -> EndpointSpec:
    """The engine under test, as the CLI would build it for this server and these retry and
    timeout settings; no start-up probe (a fault would fail it, and every request counts)."""
    return EndpointSpec(
        role=ROLE,
        urls=(base_url,),
        model=config.model,
        capabilities=Capabilities(max_concurrency=config.max_num_seqs),
        chat_template="chatml",
        batch_size=settings.max_batch_size,
        max_retries=settings.max_retries,
        backoff_base_s=settings.backoff_base_s,
        backoff_max_s=settings.backoff_max_s,
        seed=settings.seed,
        request_timeout_s=settings.request_timeout_s,
        connect_timeout_s=min(settings.request_timeout_s, 5.0),
        probe=False,
    )


def evaluation_prompts(count: int) -> list[str]:
    """Distinct instructions (so no two chains share a request) of varying quality."""
    styles = (
        "Let's think step by step.",
        "Answer carefully and check each option.",
        "Read the question, reason briefly, then give the final answer.",
        "Verify every step before you answer.",
        "Give the answer.",
    )
    return [f"{styles[i % len(styles)]} (variant {i})" for i in range(count)]


def plan(settings: MatrixSettings, task: Task) -> tuple[list[str], int]:
    """Prompts and samples per prompt so that chains = prompts x samples >= settings.chains."""
    available = len(task.split(settings.split))
    samples = min(available, settings.chains)
    prompts = math.ceil(settings.chains / samples)
    return evaluation_prompts(prompts), samples


async def run_evaluation(
    settings: MatrixSettings,
    task: Task,
    config: SimulatedServerConfig,
    cache_path: Path,
    *,
    disruption: str | None = None,
    events: int = 0,
) -> EvaluationRun:
    """One evaluation against a fresh server and cache; `events` restarts or outages
    (`disruption`) happen at evenly spaced fractions of its progress."""
    prompts, samples = plan(settings, task)
    answer_key = {s.input: s.target for s in task.split(settings.split)}
    planned = len(prompts) * samples
    async with (
        simulated_server(config, answer_key, settings.server) as url,
        aiohttp.ClientSession() as control,
    ):
        spec = EngineSetSpec((scorer_spec(settings, config, f"{url}/v1"),), cache_path=cache_path)
        disruptions = _Disruptions(
            control,
            url,
            disruption,
            [math.ceil(planned * (i + 1) / (events + 1)) for i in range(events)],
            settings.outage_simulated_s / settings.time_scale,
        )
        disruptions.start()
        result: EvaluationResult | None = None
        summary: dict[str, Any] | None = None
        engine: Engine | None = None
        hang = False
        error: str | None = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(settings.cell_deadline_s):
                async with open_engines(spec) as engines:
                    engine = engines[ROLE]
                    result = await Evaluator(engine).evaluate(
                        task, prompts, settings.split, limit=samples, on_record=disruptions.seen
                    )
                    summary = summarise([result], engine)
        except TimeoutError:
            hang = True
            logger.error("the cell did not finish within %.0f s", settings.cell_deadline_s)
        except Exception as exception:  # a crash is a verdict of its own, never hidden
            logger.exception("the evaluation raised")
            error = f"{type(exception).__name__}: {exception}"
        finally:
            wall = time.monotonic() - started
            if hang and engine is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await engine.close()
            await disruptions.finish()
        async with asyncio.timeout(30):
            while True:  # an outage may still be under way; its server comes back on its own
                try:
                    metrics = await _metrics(control, url)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
    sample_ids = tuple(sample.id for sample in task.split(settings.split)[:samples])
    return EvaluationRun(sample_ids, result, summary, metrics, wall, hang, error)


class _Disruptions:
    """Restarts the server, or takes it down for a while, as the evaluation passes thresholds
    (counted in finished chains). One disruption at a time: the next waits until the server
    answers again (and, after an outage, has been up as long as it was down)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        disruption: str | None,
        thresholds: list[int],
        outage_s: float,
    ) -> None:
        self._session = session
        self._url = url
        self._disruption = disruption
        self._thresholds = thresholds if disruption else []
        self._outage_s = outage_s
        self._finished = 0
        self._due = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        if self._thresholds:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def seen(self, _record: SampleRecord) -> None:
        self._finished += 1
        while self._thresholds and self._finished >= self._thresholds[0]:
            self._thresholds.pop(0)
            self._due += 1
            self._wakeup.set()

    async def _work(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._due:
                self._due -= 1
                try:
                    if self._disruption == "outage":
                        await _control(
                            self._session, self._url, "/sim/down", {"seconds": self._outage_s}
                        )
                        await asyncio.sleep(self._outage_s)
                    else:
                        await _control(self._session, self._url, "/sim/restart", {})
                    self.sent += 1
                    await self._until_up()
                    if self._disruption == "outage":
                        # Separate outages: back-to-back ones would be one longer outage.
                        await asyncio.sleep(self._outage_s)
                except aiohttp.ClientError as error:
                    logger.warning("a server disruption could not be sent: %s", error)

    async def _until_up(self) -> None:
        await asyncio.sleep(0.1)  # the server acts 50 ms after acknowledging
        async with asyncio.timeout(30):
            while True:
                try:
                    async with self._session.get(f"{self._url}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

    async def finish(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
