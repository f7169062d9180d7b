"""Rate-limit headers in the forms hosted APIs document, and pacing by them."""

from __future__ import annotations

import asyncio
import email.utils

import pytest

from engine.header_pacing import ARRIVAL_SLACK_S, HeaderPacing, ServerBudget
from engine.ratelimit_headers import (
    LimitReading,
    parse_duration,
    parse_reset,
    read_rate_limits,
    retry_after_s,
)

NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("7.66s", 7.66),
        ("2m59.56s", 179.56),
        ("250us", 0.00025),
        ("0.5", 0.5),
        ("30", 30.0),
    ],
)
def test_durations_in_openai_and_plain_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s", "-3", "1s garbage", "nan"])
def test_unreadable_durations_are_ignored(text: str) -> None:
    assert parse_duration(text) is None


def test_resets_as_timestamps_dates_and_instants() -> None:
    assert parse_reset(str(int(NOW + 30)), NOW) == pytest.approx(30.0)
    assert parse_reset(str(int((NOW + 2) * 1000)), NOW) == pytest.approx(2.0)
    http_date = email.utils.formatdate(NOW + 60, usegmt=True)
    assert parse_reset(http_date, NOW) == pytest.approx(60.0)
    assert parse_reset("2024-06-01T12:00:30Z", NOW) == pytest.approx(30.0)
    assert parse_reset("2024-06-01T12:00:30.500+00:00", NOW) == pytest.approx(30.5)
    assert parse_reset("2024-06-01T11:59:00Z", NOW) == 0.0  # already past
    assert parse_reset("not a time", NOW) is None


def test_openai_headers() -> None:
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    report = read_rate_limits(headers, NOW)
    assert report.requests == LimitReading(59, 1.0, 60)
    assert report.tokens == LimitReading(149984, 360.0, 150000)
    assert report.retry_after_s is None


def test_anthropic_headers_with_rfc3339_resets() -> None:
    headers = {
        "Anthropic-RateLimit-Requests-Limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2024-06-01T12:00:01Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2024-06-01T12:00:02Z",
        "retry-after": "3",
    }
    report = read_rate_limits(headers, NOW)
    assert report.requests == LimitReading(49, pytest.approx(1.0), 50)
    assert report.tokens == LimitReading(39000, pytest.approx(2.0), 40000)
    assert report.retry_after_s == 3.0


def test_groq_and_together_styles() -> None:
    groq = {
        "x-ratelimit-limit-requests": "14400",
        "x-ratelimit-remaining-requests": "14370",
        "x-ratelimit-reset-requests": "2m59.56s",
        "x-ratelimit-limit-tokens": "18000",
        "x-ratelimit-remaining-tokens": "17997",
        "x-ratelimit-reset-tokens": "7.66s",
    }
    report = read_rate_limits(groq, NOW)
    assert report.requests is not None and report.requests.reset_s == pytest.approx(179.56)
    assert report.tokens is not None and report.tokens.reset_s == pytest.approx(7.66)
    together = {
        "x-ratelimit-limit": "100",
        "x-ratelimit-remaining": "97",
        "x-ratelimit-reset": "1",
        "x-tokenlimit-limit": "200000",
        "x-tokenlimit-remaining": "199000",
    }
    report = read_rate_limits(together, NOW)
    assert report.requests == LimitReading(97, 1.0, 100)
    assert report.tokens == LimitReading(199000, None, 200000)


def test_retry_after_forms() -> None:
    assert retry_after_s({"retry-after-ms": "125", "retry-after": "1"}, NOW) == 0.125
    assert retry_after_s({"retry-after": "2.5"}, NOW) == 2.5
    date = email.utils.formatdate(NOW + 4, usegmt=True)
    assert retry_after_s({"retry-after": date}, NOW) == pytest.approx(4.0)
    assert read_rate_limits({"content-type": "application/json"}, NOW).empty


def _bucket_reading(level: float, capacity: float, rate: float) -> LimitReading:
    """What an OpenAI-style continuously refilled bucket reports at `level`."""
    return LimitReading(float(int(level)), (capacity - level) / rate, capacity)


def test_the_mirror_learns_rate_and_capacity_from_the_headers() -> None:
    budget = ServerBudget()
    capacity, rate = 10.0, 80.0
    for spent, level in enumerate([9.0, 7.6, 5.3, 2.2, 0.4], start=1):
        budget.spent = float(spent)
        budget.observe(_bucket_reading(level, capacity, rate), sent_at=0.0, spent_after=spent)
    fitted = budget.rate_and_capacity()
    assert fitted is not None
    assert fitted[0] == pytest.approx(rate, rel=0.15)
    assert fitted[1] == pytest.approx(capacity, abs=1.0)


def test_the_mirror_counts_calls_sent_after_the_answered_one() -> None:
    budget = ServerBudget(rate_per_s=10.0, capacity=10.0)
    budget.spent = 1.0
    budget.observe(LimitReading(5.0, 0.5, 10.0), sent_at=100.0, spent_after=1.0)
    assert budget.wait_s(1.0, 100.0) == 0.0
    budget.spent = 6.0  # five more sent since that call: the server has none left
    # One call's refill, and the lead that absorbs calls arriving early or out of order.
    assert budget.wait_s(1.0, 100.0) == pytest.approx(0.1 + ARRIVAL_SLACK_S)
    assert budget.wait_s(1.0, 100.2) == 0.0


def test_without_a_rate_the_remaining_budget_lasts_until_the_reset() -> None:
    budget = ServerBudget()
    budget.spent = 1.0
    budget.observe(LimitReading(1.0, 2.0, None), sent_at=50.0, spent_after=1.0)
    assert budget.wait_s(1.0, 50.0) == 0.0
    budget.spent = 2.0
    assert budget.wait_s(1.0, 50.5) == pytest.approx(1.5)


def test_header_pacing_holds_calls_to_the_server_rate() -> None:
    """A simulated API bucket of 5 requests refilled at 50/s: paced from its headers alone,
    100 calls in a row are (but for at most one) never refused."""

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        pacing = HeaderPacing()
        capacity, rate = 5.0, 50.0
        level, updated, refused = capacity, loop.time(), 0
        for _ in range(100):
            for _ in range(1000):
                wait = pacing.wait_s(1.0, loop.time())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            pacing.spend(1.0, loop.time())
            now = loop.time()
            level = min(capacity, level + (now - updated) * rate)
            updated = now
            if level < 1.0:
                refused += 1
            else:
                level -= 1.0
            reset = (capacity - level) / rate
            headers = {
                "x-ratelimit-limit-requests": "3000",
                "x-ratelimit-remaining-requests": str(int(level)),
                "x-ratelimit-reset-requests": f"{max(1, round(reset * 1000))}ms",
            }
            pacing.on_headers(headers, now)
        return refused

    assert asyncio.run(scenario()) <= 1
