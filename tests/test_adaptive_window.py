"""The window found by measurement, on synthetic servers: latency and throughput traces."""

from __future__ import annotations

import pytest

from engine.adaptive_window import MeasuredWindow
from engine.server_load import parse_vllm_load


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batching_server_latency(in_flight: int, slots: int, step_s: float = 0.01) -> float:
    """A continuous-batching server with `slots` sequences at once: one step's time grows
    slowly with the batch; past `slots`, sequences queue for whole rounds of the batch."""
    batch = min(in_flight, slots)
    service = 100 * step_s * (1.0 + 0.5 * batch / slots)
    rounds = max(1.0, in_flight / slots)
    return service * rounds


def drive(
    window: MeasuredWindow,
    latency_of: object,
    rounds: int,
    clock: Clock,
    *,
    per_call: int = 8,
) -> list[int]:
    """Keep the window full for `rounds` round trips; the sizes after each."""
    sizes = []
    for _ in range(rounds):
        size = window.size
        latency = latency_of(size)  # type: ignore[operator]
        for _ in range(max(1, size // per_call)):
            window.on_success(per_call, latency, size)
        clock.now += latency
        sizes.append(window.size)
    return sizes


def test_grows_on_a_server_whose_latency_stays_flat() -> None:
    clock = Clock()
    window = MeasuredWindow(16, 1, 1024, clock=clock)
    sizes = drive(window, lambda _: 0.5, 12, clock)
    assert sizes[3] >= 64  # slow start: it doubles per round trip
    assert window.size == 1024  # and stops at its bound


def test_settles_near_the_knee_of_a_batching_server() -> None:
    clock = Clock()
    window = MeasuredWindow(16, 1, 4096, clock=clock)
    sizes = drive(window, lambda n: batching_server_latency(n, 256), 200, clock)
    settled = sizes[-50:]
    assert min(settled) >= 256 * 0.95  # enough in flight to fill every slot
    assert max(settled) <= 256 * 2.5  # not the bound: more would buy only latency


def test_backs_off_when_latency_climbs() -> None:
    clock = Clock()
    window = MeasuredWindow(128, 1, 1024, clock=clock)
    drive(window, lambda _: 0.5, 10, clock)
    before = window.size
    drive(window, lambda _: 3.0, 40, clock)  # the server got 6x slower under the same load
    assert window.size < before * 0.7
    assert window.size >= 1


def test_halves_on_429s_and_timeouts_once_per_burst() -> None:
    clock = Clock()
    window = MeasuredWindow(200, 4, 1024, clock=clock)
    for _ in range(20):  # one burst: many errors at once
        window.on_congestion()
    assert window.size == 100
    clock.now += 2.0
    window.on_congestion()
    assert window.size == 50
    for _ in range(20):
        clock.now += 2.0
        window.on_congestion()
    assert window.size == 4  # never below its minimum


def test_stays_within_its_bounds_and_ignores_an_idle_window() -> None:
    clock = Clock()
    window = MeasuredWindow(5000, 8, 512, clock=clock)
    assert window.size == 512
    window = MeasuredWindow(64, 8, 512, clock=clock)
    for _ in range(1000):  # answers while only 4 are ever in flight: the window is not in use
        window.on_success(1, 0.1, 4)
    assert window.size == 64


def test_vllm_metrics_hold_the_window_when_requests_wait() -> None:
    clock = Clock()
    window = MeasuredWindow(64, 1, 4096, clock=clock)
    window.on_server_load(running=64, waiting=0, batch=32)
    for _ in range(40):  # latency climbs, but the server has free slots: grow
        window.on_success(32, 0.5 + window.size / 100, window.size)
    assert window.size >= 256
    for _ in range(60):
        clock.now += 0.25
        window.on_server_load(running=256, waiting=300, batch=32)
        window.on_success(32, 1.0, window.size)
    assert window.size == 256 + 128 + 32  # running + running / 2 + one list: the batch stays full


def test_parses_vllm_metrics_text() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 7.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 3.0',
            'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0',
            'vllm:num_requests_waiting_by_reason{reason="x"} 9.0',
        ]
    )
    assert parse_vllm_load(text) == (10.0, 2.0)
    assert parse_vllm_load("sim_http_requests_total 4\n") is None


@pytest.mark.parametrize("slots", [16, 64])
def test_settles_near_smaller_knees_too(slots: int) -> None:
    clock = Clock()
    window = MeasuredWindow(4, 1, 4096, clock=clock)
    sizes = drive(window, lambda n: batching_server_latency(n, slots), 300, clock, per_call=1)
    assert slots * 0.95 <= min(sizes[-50:]) <= max(sizes[-50:]) <= slots * 2.5


def test_a_list_waiting_for_its_prefill_does_not_stop_growth() -> None:
    """vLLM's waiting count is not 0 while a prompt list waits for its prefill; while the
    running count still grows, the server is not full."""
    clock = Clock()
    window = MeasuredWindow(64, 1, 4096, clock=clock)
    for poll in range(1, 6):
        clock.now += 0.25
        window.on_server_load(running=48 * poll, waiting=64, batch=32)
        for _ in range(4):
            window.on_success(32, 1.0, window.size)
    assert window.size >= 256
