"""The lifecycle of a local model server run as a subprocess: launch, wait until ready, stop.

A `ManagedServer` launches a command that listens on 127.0.0.1 at a port chosen here (a free one
unless given), sends the server's stdout and stderr to a log file, and polls `ready_paths`
(`/health`, then `/v1/models`) until one answers 200. If the process exits first, or the
deadline passes, the error names the command (secrets redacted), the exit code and the log's
last lines. Stopping sends SIGTERM to the server's whole process group, waits, then SIGKILLs
what is left, so worker processes the server spawned go too. Stopping also happens when the
`with` block ends by an error, by Ctrl-C (KeyboardInterrupt or task cancellation), and, as a
last resort, at interpreter exit; on Linux the server is also told to die with its parent.

The server runs in its own session, so a Ctrl-C in the terminal reaches only this process,
which then stops the server in order instead of both racing to exit. Reading and redacting its
command line is `backends.argv_options`; `with`/`async with` come from `backends.start_stop`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import http.client
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from backends.argv_options import redact_argv
from backends.errors import BackendError, ConfigError
from backends.start_stop import StartStopContext

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
DEFAULT_READY_PATHS = ("/health", "/v1/models")
_LOG_TAIL_BYTES = 64 * 1024
_PR_SET_PDEATHSIG = 1
_LAUNCH_ATTEMPTS = 3


class ServerStartFailed(BackendError):
    """A managed server exited, or did not answer, before it was ready. Retrying cannot help."""

    retryable = False
    kind = "server_start"


def free_port(host: str = LOOPBACK_HOST) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK_HOST) -> bool:
    """True when a listening socket could be bound to `host:port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def read_log_tail(path: Path, max_lines: int = 40) -> str:
    """The last `max_lines` lines of a log file, or a note that there is none."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError as error:
        return f"(no log: {error.strerror})"
    lines = data.decode("utf-8", "replace").splitlines()[-max_lines:]
    return "\n".join(lines) if lines else "(the log is empty)"


def http_get_json(url: str, *, timeout_s: float = 5.0, api_key: str | None = None) -> Any:
    """GET `url` and parse its JSON body; raises `urllib.error.URLError` or `ValueError`."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return orjson.loads(response.read())


def _exit_phrase(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _http_status(url: str, timeout_s: float) -> int | None:
    """The HTTP status of GET `url`, or None when nothing answers or the answer is cut short."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError, http.client.HTTPException):
        return None


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when the launching thread ends.

    The kernel ties this to the thread, not the process, so it is only safe from the main thread.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    if not sys.platform.startswith("linux") or not on_main_thread:
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


class ManagedServerFront(StartStopContext):
    """A model server built around one `ManagedServer` subprocess (`self._server`): its URLs, its
    process, and stopping it. Subclasses start it (after their own checks) in `start` and
    `start_sync`."""

    _server: ManagedServer

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL, `http://127.0.0.1:PORT/v1`."""
        return f"{self._server.root_url}/v1"

    @property
    def root_url(self) -> str:
        return self._server.root_url

    @property
    def process(self) -> ManagedServer:
        """The managed subprocess: pid, log path, log tail, whether it still runs."""
        return self._server

    async def stop(self) -> None:
        await self._server.stop()

    def stop_sync(self) -> None:
        self._server.stop_sync()


class ManagedServer(StartStopContext):
    """One server subprocess bound to 127.0.0.1; usable as a sync or an async context manager.

    `command` builds the argv for a given port, so that the port can be chosen here. When no log
    path is given the log goes to a temporary file, removed when the server stops (kept when it
    failed to start). A free port can be taken by another process before the server binds it;
    then the launch is retried on another port.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        *,
        name: str,
        port: int | None = None,
        log_path: Path | str | None = None,
        ready_paths: Sequence[str] = DEFAULT_READY_PATHS,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 15.0,
        env: Mapping[str, str] | None = None,
        poll_interval_s: float = 0.1,
    ) -> None:
        if not ready_paths:
            raise ConfigError(f"{name}: at least one readiness path is needed")
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"{name}: port {port} is not between 1 and 65535")
        self._command = command
        self._name = name
        self._requested_port = port
        self._port: int | None = None
        self._log_path = Path(log_path) if log_path is not None else None
        self._temporary_log = log_path is None
        self._keep_log = False
        self._ready_paths = tuple(ready_paths)
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._env = dict(env) if env is not None else None
        self._poll_interval_s = poll_interval_s
        self._process: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []
        self._ready_path: str | None = None

    # ---- what callers read -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self._name} has not been started")
        return self._port

    @property
    def root_url(self) -> str:
        """`http://127.0.0.1:PORT`, without a path."""
        return f"http://{LOOPBACK_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def ready_path(self) -> str | None:
        """The readiness path that answered 200."""
        return self._ready_path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    @property
    def command_line(self) -> str:
        """The command as launched, with secret values redacted; safe to log."""
        return shlex.join(redact_argv(self._argv))

    def log_tail(self, max_lines: int = 40) -> str:
        if self._log_path is None:
            return "(no log yet)"
        return read_log_tail(self._log_path, max_lines)

    def describe_exit(self) -> str:
        """Why the process is gone, with the log's tail: for errors raised after startup."""
        how = _exit_phrase(self.returncode)
        return f"{self._name} {how}; last lines of {self._log_path}:\n{self.log_tail()}"

    # ---- launching -----------------------------------------------------------------------

    def _choose_port(self) -> int:
        if self._requested_port is None:
            return free_port()
        if not port_is_free(self._requested_port):
            raise ConfigError(
                f"{self._name}: port {self._requested_port} on {LOOPBACK_HOST} is already in use;"
                " choose another port or leave it out to use a free one"
            )
        return self._requested_port

    def _launch(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"{self._name} was already started")
        self._port = self._choose_port()
        self._argv = [str(arg) for arg in self._command(self._port)]
        if self._log_path is None:
            handle, path = tempfile.mkstemp(prefix="gpo-server-", suffix=".log")
            os.close(handle)
            self._log_path = Path(path)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._env} if self._env is not None else None
        log_file: BinaryIO
        with self._log_path.open("ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"# {stamp} starting: {self.command_line}\n".encode())
            log_file.flush()
            try:
                self._process = subprocess.Popen(
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent_hook(),
                )
            except OSError as error:
                if self._temporary_log:
                    self._log_path.unlink(missing_ok=True)
                    self._log_path = None
                raise ServerStartFailed(
                    f"{self._name}: cannot run {self.command_line}: {error.strerror or error}"
                ) from None
        atexit.register(self._kill_at_exit)
        logger.info(
            "started %s (pid %d) on %s; log %s",
            self._name,
            self._process.pid,
            self.root_url,
            self._log_path,
        )

    def _probe(self, unsupported: set[str]) -> bool:
        """One round over the readiness paths; a path answering 404 is not asked again."""
        for path in self._ready_paths:
            if path in unsupported:
                continue
            status = _http_status(f"{self.root_url}{path}", timeout_s=2.0)
            if status == 200:
                self._ready_path = path
                return True
            if status == 404 and len(unsupported) + 1 < len(self._ready_paths):
                unsupported.add(path)
        return False

    def _not_ready_error(self, elapsed_s: float) -> ServerStartFailed:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            reason = f"{_exit_phrase(code)} before it was ready"
        else:
            paths = " or ".join(self._ready_paths)
            reason = f"did not answer {paths} on {self.root_url} within {elapsed_s:.0f} s"
        return ServerStartFailed(
            f"{self._name} {reason}.\ncommand: {self.command_line}\n"
            f"last lines of {self._log_path}:\n{self.log_tail()}"
        )

    # ---- sync lifecycle --------------------------------------------------------------------

    def start_sync(self) -> None:
        """Launch and block until ready; on any failure (Ctrl-C included) the process is stopped."""
        for attempt in range(_LAUNCH_ATTEMPTS):
            try:
                self._start_once_sync()
                return
            except ServerStartFailed as error:
                if not self._retry_on_other_port(error, attempt):
                    raise

    def _start_once_sync(self) -> None:
        self._launch()
        try:
            unsupported: set[str] = set()
            started = time.monotonic()
            while True:
                if self._process is None or self._process.poll() is not None:
                    raise self._not_ready_error(time.monotonic() - started)
                if self._probe(unsupported):
                    break
                if time.monotonic() - started > self._startup_timeout_s:
                    raise self._not_ready_error(time.monotonic() - started)
                time.sleep(self._poll_interval_s)
        except BaseException as error:
            self._keep_log_after(error)
            self.stop_sync()
            raise
        elapsed_s = time.monotonic() - started
        logger.info("%s ready on %s after %.1f s", self._name, self.root_url, elapsed_s)

    def stop_sync(self) -> None:
        """SIGTERM the process group, wait, SIGKILL what remains; safe to call twice."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._warn_killing()
                self._signal_group(signal.SIGKILL)
                process.wait()
        self._finish_stop()

    # ---- async lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Launch and wait until ready without blocking the event loop.

        On failure, and on cancellation (Ctrl-C under `asyncio.run`), the process is stopped.
        """
        for attempt in range(_LAUNCH_ATTEMPTS):
            try:
                await self._start_once()
                return
            except ServerStartFailed as error:
                if not self._retry_on_other_port(error, attempt):
                    raise

    async def _start_once(self) -> None:
        self._launch()
        try:
            unsupported: set[str] = set()
            loop = asyncio.get_running_loop()
            started = loop.time()
            while True:
                if self._process is None or self._process.poll() is not None:
                    raise self._not_ready_error(loop.time() - started)
                if await asyncio.to_thread(self._probe, unsupported):
                    break
                if loop.time() - started > self._startup_timeout_s:
                    raise self._not_ready_error(loop.time() - started)
                await asyncio.sleep(self._poll_interval_s)
        except BaseException as error:
            self._keep_log_after(error)
            await self.stop()
            raise
        logger.info("%s ready on %s after %.1f s", self._name, self.root_url, loop.time() - started)

    def _keep_log_after(self, error: BaseException) -> None:
        """A failed start keeps even a temporary log: the error message points to it."""
        if isinstance(error, ServerStartFailed):
            self._keep_log = True

    def _retry_on_other_port(self, error: ServerStartFailed, attempt: int) -> bool:
        """True when a free port chosen here was taken before the server bound it: try again."""
        lost_race = "address already in use" in str(error).lower()
        if self._requested_port is None and lost_race and attempt + 1 < _LAUNCH_ATTEMPTS:
            logger.warning("%s lost its port to another process; trying another", self._name)
            self._keep_log = False
            return True
        return False

    async def stop(self) -> None:
        """Like `stop_sync` without blocking the loop; if cancelled meanwhile, kills at once."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                self._signal_group(signal.SIGTERM)
                deadline = time.monotonic() + self._stop_timeout_s
                while process.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if process.poll() is None:
                    self._warn_killing()
                    self._signal_group(signal.SIGKILL)
                    while process.poll() is None:
                        await asyncio.sleep(0.02)
        except BaseException:
            self._kill_now()
            raise
        self._finish_stop()

    async def wait_exited(self, poll_interval_s: float = 0.5) -> int:
        """Return the exit code once the process ends by itself (for `gpo serve`)."""
        assert self._process is not None, "not started"
        while (code := self._process.poll()) is None:
            await asyncio.sleep(poll_interval_s)
        return code

    # ---- stopping internals --------------------------------------------------------------

    def _signal_group(self, signum: signal.Signals) -> None:
        """Signal the server's process group (it leads its own session), or just the server."""
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def _warn_killing(self) -> None:
        logger.warning(
            "%s did not exit %.0f s after SIGTERM; killing it", self._name, self._stop_timeout_s
        )

    def _kill_now(self) -> None:
        process = self._process
        if process is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
        self._finish_stop()

    def _finish_stop(self) -> None:
        process = self._process
        if process is None:
            return
        # Workers the server left behind in its group would otherwise outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        code = process.poll()
        logger.info("stopped %s (pid %d, exit code %s)", self._name, process.pid, code)
        self._process = None
        atexit.unregister(self._kill_at_exit)
        if self._temporary_log and not self._keep_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def _kill_at_exit(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._kill_now()
