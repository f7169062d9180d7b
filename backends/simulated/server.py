"""The simulated server in this process: listen on a loopback port, go down, come back, stop.

    async with SimulatedServer(SimulatedServerConfig(time_scale=100)) as server:
        ...  # send requests to server.url, e.g. "http://127.0.0.1:40123"

`take_down(seconds)` imitates a crash: the listening socket closes (new connections are
refused), every open connection is aborted, queued and running sequences are lost, the prefix
cache empties and rate-limit buckets refill; after `seconds` (real) it listens again on the same
port. `restart()` is the same with no pause. Counters are kept across both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiohttp import web

from backends.errors import ConfigError
from backends.simulated.answer_key import AnswerKey
from backends.simulated.app import SimulatedApp
from backends.simulated.config import SimulatedServerConfig
from backends.simulated.metrics import ServerCounters
from backends.start_stop import AsyncStartStopContext

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
SHUTDOWN_TIMEOUT_S = 1.0


class SimulatedServer(AsyncStartStopContext):
    """An in-process simulated vLLM-like server (see the package docs for the protocol)."""

    def __init__(
        self,
        config: SimulatedServerConfig | None = None,
        *,
        answer_key: AnswerKey | Mapping[str, object] | None = None,
    ) -> None:
        self.config = config or SimulatedServerConfig()
        if answer_key is not None and not isinstance(answer_key, AnswerKey):
            answer_key = AnswerKey(answer_key)
        self._app = SimulatedApp(
            self.config, answer_key, take_down=self.take_down, restart=self._restart_action
        )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = self.config.port
        self._come_back: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._runner is None:
            raise ConfigError("the simulated server is not started; use `async with` or start()")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. "http://127.0.0.1:40123" (the OpenAI API is under /v1)."""
        return f"http://{HOST}:{self.port}"

    @property
    def counters(self) -> ServerCounters:
        return self._app.counters

    @property
    def is_up(self) -> bool:
        return self._site is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._app.application,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        self._runner = runner
        await self._listen(runner)
        self._app.start()
        logger.info("simulated server for %s listening on %s", self.config.model, self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._come_back is not None:
            self._come_back.cancel()
            self._come_back = None
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self._abort_connections(runner)
        await self._app.close()
        await runner.cleanup()
        logger.info("simulated server on port %d stopped", self._port)

    async def take_down(self, seconds: float | None = None) -> None:
        """Crash now; listen again after `seconds` real seconds (None: until `bring_up()`)."""
        runner = self._runner
        if runner is None:
            raise ConfigError("the simulated server is not started")
        if self._come_back is not None:
            self._come_back.cancel()
            self._come_back = None
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self._abort_connections(runner)
        self._app.crash()
        self._app.counters.restarts += 1
        logger.info("simulated server on port %d went down", self._port)
        if seconds is not None:
            self._come_back = asyncio.get_running_loop().create_task(self._bring_up_after(seconds))

    async def bring_up(self) -> None:
        """Listen again on the same port (no-op when up)."""
        if self._come_back is not None and self._come_back is not asyncio.current_task():
            self._come_back.cancel()
            self._come_back = None
        if self._runner is not None and self._site is None:
            await self._listen(self._runner)
            logger.info("simulated server on port %d is back up", self._port)

    async def restart(self) -> None:
        """Crash and come straight back on the same port."""
        await self.take_down(None)
        await self.bring_up()

    async def _restart_action(self, _seconds: float | None) -> None:
        await self.restart()

    async def _bring_up_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._come_back = None
        await self.bring_up()

    async def _listen(self, runner: web.AppRunner) -> None:
        site = web.TCPSite(runner, HOST, self._port, reuse_address=True)
        await site.start()
        self._site = site
        if self._port == 0:
            self._port = runner.addresses[0][1]

    @staticmethod
    def _abort_connections(runner: web.AppRunner) -> None:
        server = runner.server
        if server is None:
            return
        for handler in list(server.connections):
            transport = handler.transport
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.abort()
