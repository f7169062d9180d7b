"""Update direction: which trajectory entries the meta-prompt shows (the analogue of momentum).

Selectors over the trajectory (the last entry is the current prompt), with k counting the
current prompt:

- `relevance` (GPO): embed the current prompt and every earlier entry, L2-normalise, rank the
  earlier entries by cosine similarity and keep the top k-1. Order `ascending` (the paper): the
  retrieved entries from least to most similar, then the current prompt last. Order `reference`
  (the reference code): the current prompt first, then the others most-similar first. Ties keep
  the reference's `argsort` order.
- `recency`: the last k entries, newest first.
- `importance`: the k best-scoring entries, best first (ties: earlier first).
- `none`: nothing; the meta-prompt then shows the current prompt with its score only.
- `summary`: nothing retrieved; the direction is a running summary kept by the loop (SGDM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from backends.errors import ConfigError
from gpo.embedders import Embedder, l2_normalise
from gpo.trajectory import TrajectoryEntry

Direction = Literal["relevance", "recency", "importance", "none", "summary"]
DIRECTIONS: tuple[str, ...] = ("relevance", "recency", "importance", "none", "summary")
RelevanceOrder = Literal["ascending", "reference"]
RELEVANCE_ORDERS: tuple[str, ...] = ("ascending", "reference")


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"unknown update direction {direction!r} (--direction); "
            f"valid directions: {', '.join(DIRECTIONS)}"
        )


def select_recency(entries: Sequence[TrajectoryEntry], k: int) -> list[TrajectoryEntry]:
    return list(entries[-k:])[::-1] if k > 0 else []


def select_importance(entries: Sequence[TrajectoryEntry], k: int) -> list[TrajectoryEntry]:
    return sorted(entries, key=lambda entry: entry.dev_score, reverse=True)[: max(k, 0)]


def rank_by_similarity(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidate indices, most similar first (cosine), as the reference's reversed argsort."""
    query = l2_normalise(query.reshape(1, -1))
    candidates = l2_normalise(candidates)
    similarity = (query @ candidates.T)[0]
    return np.argsort(similarity, kind="stable")[::-1]


async def select_relevance(
    entries: Sequence[TrajectoryEntry],
    k: int,
    embedder: Embedder,
    order: RelevanceOrder = "ascending",
) -> list[TrajectoryEntry]:
    if not entries or k < 1:
        return []
    current = entries[-1]
    earlier = list(entries[:-1])[::-1]  # newest first, as the reference lists them
    retrieved: list[TrajectoryEntry] = []
    if earlier and k > 1:
        vectors = await embedder.embed([current.prompt] + [entry.prompt for entry in earlier])
        ranking = rank_by_similarity(vectors[0], vectors[1:])
        retrieved = [earlier[int(i)] for i in ranking[: k - 1]]
    if order == "reference":
        return [current, *retrieved]
    if order == "ascending":
        return [*retrieved[::-1], current]
    raise ConfigError(
        f"unknown relevance order {order!r} (--relevance-order); "
        f"valid orders: {', '.join(RELEVANCE_ORDERS)}"
    )


async def select_direction(
    direction: Direction,
    entries: Sequence[TrajectoryEntry],
    k: int,
    *,
    embedder: Embedder | None = None,
    order: RelevanceOrder = "ascending",
) -> list[TrajectoryEntry]:
    """The trajectory entries to show for `direction` (empty for `none` and `summary`)."""
    check_direction(direction)
    if direction == "relevance":
        if embedder is None:
            raise ConfigError("the relevance direction needs an embedder")
        return await select_relevance(entries, k, embedder, order)
    if direction == "recency":
        return select_recency(entries, k)
    if direction == "importance":
        return select_importance(entries, k)
    return []
