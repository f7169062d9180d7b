"""The tests' waiting helpers: a server that resets the connection while its answer is read is
down, not an error that escapes the wait; a server that answers nothing in time is not down."""

from __future__ import annotations

import socket
import struct

from tests.scripted_server import raw_server
from tests.waiting import probe, refuses_connections, wait_until, wait_until_refused


def reset_after_request(connection: socket.socket) -> None:
    """Read the request, then abort the connection (RST) instead of answering."""
    connection.recv(65536)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def close_after_request(connection: socket.socket) -> None:
    """Read the request, then close without a status line (RemoteDisconnected)."""
    connection.recv(65536)
    connection.close()


def test_a_reset_while_the_answer_is_read_counts_as_down() -> None:
    with raw_server(reset_after_request) as url:
        assert probe(f"{url}/health") == "down"
        assert wait_until_refused(url)


def test_a_connection_closed_before_the_status_line_counts_as_down() -> None:
    with raw_server(close_after_request) as url:
        assert probe(f"{url}/health") == "down"


def test_silence_is_not_down_and_a_closed_port_is() -> None:
    held: list[socket.socket] = []
    with raw_server(held.append) as url:  # accepts, never answers
        assert probe(f"{url}/health", timeout_s=0.2) == "unknown"
        port = int(url.rsplit(":", 1)[1])
        assert not refuses_connections(port)
    for connection in held:
        connection.close()
    assert wait_until(lambda: refuses_connections(port))
