"""Update-direction selectors: which entries are shown, and in which order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from backends.errors import ConfigError
from gpo.retrieval import select_direction
from gpo.trajectory import TrajectoryEntry


class TableEmbedder:
    """Vectors from a table, so similarity is known exactly."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls = 0

    @property
    def identity(self) -> str:
        return "table"

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.asarray([self.table[text] for text in texts], dtype=np.float32)

    async def close(self) -> None:
        return None


ENTRIES = [
    TrajectoryEntry(-1, "p0", 0.30),
    TrajectoryEntry(0, "p1", 0.50),
    TrajectoryEntry(1, "p2", 0.40),
    TrajectoryEntry(2, "p3", 0.45),
    TrajectoryEntry(3, "now", 0.35),
]
# Cosine similarity to "now" = [1, 0]: p2 0.99 > p0 0.8 > p3 0.6 > p1 0.0 (lengths differ on
# purpose: only the direction may count).
TABLE = {
    "now": [2.0, 0.0],
    "p0": [0.8, 0.6],
    "p1": [0.0, 5.0],
    "p2": [9.9, 1.4],
    "p3": [0.6, 0.8],
}


def prompts(entries: Sequence[TrajectoryEntry]) -> list[str]:
    return [entry.prompt for entry in entries]


async def test_relevance_ascending_lists_least_similar_first_and_current_last() -> None:
    shown = await select_direction("relevance", ENTRIES, 3, embedder=TableEmbedder(TABLE))
    assert prompts(shown) == ["p0", "p2", "now"]


async def test_relevance_reference_order_lists_current_first_then_most_similar() -> None:
    shown = await select_direction(
        "relevance", ENTRIES, 4, embedder=TableEmbedder(TABLE), order="reference"
    )
    assert prompts(shown) == ["now", "p2", "p0", "p3"]


async def test_relevance_with_only_the_initial_prompt_shows_it_alone() -> None:
    embedder = TableEmbedder(TABLE)
    shown = await select_direction("relevance", ENTRIES[:1], 3, embedder=embedder)
    assert prompts(shown) == ["p0"]
    assert embedder.calls == 0


async def test_recency_is_the_last_k_newest_first() -> None:
    shown = await select_direction("recency", ENTRIES, 3)
    assert prompts(shown) == ["now", "p3", "p2"]


async def test_importance_is_the_top_k_by_score_best_first() -> None:
    shown = await select_direction("importance", ENTRIES, 3)
    assert prompts(shown) == ["p1", "p3", "p2"]


async def test_none_and_summary_show_no_trajectory() -> None:
    assert await select_direction("none", ENTRIES, 3) == []
    assert await select_direction("summary", ENTRIES, 3) == []


async def test_unknown_direction_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="relevance, recency, importance, none, summary"):
        await select_direction("random", ENTRIES, 3)  # type: ignore[arg-type]
