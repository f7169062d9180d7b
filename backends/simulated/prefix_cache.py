"""Automatic prefix caching in fixed-size blocks with LRU eviction, as vLLM does it.

A prompt is cut into blocks of `block_size` tokens; only full blocks can be cached. When a
sequence is admitted, the longest run of its leading blocks already in the cache is a hit: those
tokens skip prefill. All of the prompt's full blocks are then (re)inserted as most recently used,
evicting the least recently used blocks beyond `capacity_blocks`. vLLM always recomputes the last
prompt token (it needs its logits), so at most `prompt_tokens - 1` tokens are reported cached.

Blocks filled by generated tokens are inserted too (`insert`, when the sequence finishes), as
vLLM's v1 KV-cache manager caches every block that becomes full while decoding: a chat's next turn,
which repeats the previous prompt and answer, then finds both cached.

Simplification: blocks are inserted when the sequence is admitted, not when its prefill finishes,
so a second copy of a prompt admitted in the same step already hits (vLLM's v1 scheduler behaves
the same way for blocks allocated earlier in the step).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """LRU set of block keys (`tokens.prefix_block_hashes`) with hit counters in tokens."""

    __slots__ = ("_blocks", "block_size", "capacity_blocks", "hit_tokens", "query_tokens")

    def __init__(self, capacity_blocks: int, block_size: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.query_tokens = 0
        self.hit_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def hit_rate(self) -> float:
        """Cached tokens / prompt tokens looked up, since the start (0 before any lookup)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    def admit(self, block_keys: Sequence[int], prompt_tokens: int) -> int:
        """Look the prompt up and insert its blocks; return the number of cached prompt tokens."""
        blocks = self._blocks
        hits = 0
        for key in block_keys:
            if key not in blocks:
                break
            hits += 1
        self.insert(block_keys)
        cached = min(hits * self.block_size, max(prompt_tokens - 1, 0))
        self.query_tokens += prompt_tokens
        self.hit_tokens += cached
        return cached

    def insert(self, block_keys: Sequence[int]) -> None:
        """Cache blocks computed while decoding (most recently used; no lookup is counted)."""
        blocks = self._blocks
        for key in block_keys:
            if key in blocks:
                blocks.move_to_end(key)
            else:
                blocks[key] = None
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)

    def clear(self) -> None:
        """Forget every block (a server restart); the counters are kept."""
        self._blocks.clear()
