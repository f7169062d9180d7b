"""Prefix-affinity routing over replicas: send a call where its prompt's prefix is already in a
replica's KV cache, with every replica's load kept within (1 + c) of its share.

Why: vLLM (and SGLang, TGI) keep computed KV blocks of earlier prompts (automatic prefix
caching); a prompt whose leading tokens are cached skips their prefill. With several replicas a
conversation's second turn (which repeats its first turn and the answer) only hits if it lands on
the replica that served the first turn; candidates scored on the same sample (GPO's default
`Q_end` layout puts the question, and any few-shot block, first) or one candidate on many samples
(`Q_begin` / `before_Q`: the instruction first) share a leading prefix, worth keeping together.

**Prefix keys.** A call's text (a completion's first prompt; a chat's messages rendered as
`role\\ncontent\\n` one after another, so a conversation's earlier turns render as a prefix of
its later ones) is cut into chunks of `CHUNK_CHARS` characters; the key of the first k chunks is
`h_k = hash(h_{k-1}, chunk_k)` (chained, so `h_k` names the whole prefix), up to `MAX_CHUNKS`.
Which layout shares more is left to the text itself: whatever prefix two calls share, their
chained keys agree up to it, so no layout is hard-wired. Measured on bbh/navigate (8 candidates
x 24 dev samples, chat first turns, mean characters of common prefix):

    layout             prompt   same sample, other candidate   same candidate, other sample
    Q_end              364      189                             92
    Q_end, 3 shots     1499     152                             1227
    Q_begin            364      10                              271
    Q_begin, 3 shots   1499     10                              1407
    before_Q           371      12                              278

so the default `Q_end` groups a sample's candidates, and every other layout (and any few-shot
block, which repeats the instruction in each demonstration) groups a candidate's samples.

**Where a prefix was served** (`PrefixTable`): an LRU map `h_k -> replica` for k >= `MIN_CHUNKS`,
written for every call routed. A new call looks up its longest recorded prefix (walking k up
while `h_k` is known); a match of at least `MIN_CHUNKS` chunks (`MIN_CHUNKS * CHUNK_CHARS`
characters, about two 16-token KV blocks) names the replica that holds it. A second turn matches
its whole first turn; a candidate's call matches the question another candidate sent. This is the
approximate radix tree of SGLang's cache-aware router and vLLM production-stack's prefix-aware
routing, kept as a flat hash map (the chained keys make each entry a whole prefix).

**Consistent hashing for new prefixes.** A call with no recorded prefix goes to the replica its
key `h_m` (m = min(MIN_CHUNKS, chunks)) falls on in a hash ring with `VIRTUAL_NODES` points per
replica (Karger et al. 1997): the first point clockwise of the key. A replica that is down
(cooling down in the pool) is skipped, so its keys move to their next replica on the ring, and
only its keys move; when it comes back, new prefixes that hash to it return to it. Prefixes
already re-served elsewhere stay where their KV cache now is (the returned replica starts cold),
until the table forgets them.

**Bounded loads** (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
SODA 2018). Let `x_i` be replica i's outstanding sequences, `w` the call's (prompts x n),
`L = sum_i x_i` over usable replicas, `cap_i` replica i's capacity (its `max_num_seqs` where
known, else 1) and `C = sum_i cap_i`. Replica i may take the call when

    x_i + w <= b_i,   b_i = ceil((1 + c) * (L + w) * cap_i / C),

capped at `cap_i` while the pool is not saturated (`L + w <= C`), so no replica queues work while
another has free slots (that would cost throughput, which matters more than a cache hit). The
preferred replica (the longest recorded prefix's, else the ring's) is taken if it may; else the
walk goes on clockwise around the ring from the key to the first replica that may. With unit
weights the b_i sum to at least (1 + c)(L + 1) > L + 1, so some replica always may, and every
replica's load stays within ceil((1 + c) x its share of the average); the paper shows each key
then moves O(1/c^2) places in expectation when replicas come and go. With weighted calls a walk
can find none (one call larger than every slack): the least-loaded usable replica takes it.
`c` is `balance` (default 0.25: loads within 25 % of the mean).

Routing is a pure decision over the loads the pool passes in; the pool keeps the loads, the
cool-downs and the failures (`engine.endpoint_pool`).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence

from backends.protocol import Message

CHUNK_CHARS = 64
"""Characters per prefix chunk (about 16 tokens: one vLLM KV block)."""
MIN_CHUNKS = 2
"""A shared prefix shorter than this many chunks is not worth following."""
MAX_CHUNKS = 128
"""Prefixes are keyed up to this many chunks (8,192 characters); longer ones share the key."""
VIRTUAL_NODES = 100
TABLE_ENTRIES = 200_000
DEFAULT_BALANCE = 0.25

ROUTINGS = ("affinity", "least-loaded")
"""`affinity`: prefix affinity with bounded loads (this module). `least-loaded`: least outstanding
work first, for replicas behind a router that already routes by prefix."""


def prefix_keys(text: str) -> list[int]:
    """`h_1 ... h_k`: chained keys of the text's first 1..k chunks (k <= MAX_CHUNKS)."""
    keys: list[int] = []
    key = 0
    end = min(len(text), CHUNK_CHARS * MAX_CHUNKS)
    for start in range(0, end, CHUNK_CHARS):
        key = hash((key, text[start : start + CHUNK_CHARS]))
        keys.append(key)
    return keys or [0]


def render_messages(messages: Sequence[Message]) -> str:
    """A chat as one string in which a conversation's earlier turns are a prefix of later ones."""
    return "".join(f"{role}\n{content}\n" for role, content in messages)


def _ring_point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class PrefixTable:
    """LRU map from a prefix key to the replica that last served a call with that prefix."""

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int = TABLE_ENTRIES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, keys: Sequence[int]) -> tuple[int, int] | None:
        """(chunks matched, replica) for the longest recorded prefix of at least MIN_CHUNKS."""
        found: tuple[int, int] | None = None
        for depth in range(MIN_CHUNKS - 1, len(keys)):
            replica = self._entries.get(keys[depth])
            if replica is None:
                break
            found = (depth + 1, replica)
        return found

    def record(self, keys: Sequence[int], replica: int) -> None:
        entries = self._entries
        for key in keys[MIN_CHUNKS - 1 :]:
            entries[key] = replica
            entries.move_to_end(key)
        while len(entries) > self.capacity:
            entries.popitem(last=False)


class AffinityRouter:
    """Chooses a replica for a call: its prefix's replica, else its ring replica, within the
    bounded load; `balance` is the c of the module docstring."""

    def __init__(
        self,
        capacities: Sequence[int],
        *,
        balance: float = DEFAULT_BALANCE,
        table_entries: int = TABLE_ENTRIES,
    ) -> None:
        if balance <= 0:
            raise ValueError(f"balance must be positive, got {balance}")
        self.capacities = [max(1, c) for c in capacities]
        self.balance = balance
        self.table = PrefixTable(table_entries)
        points = [
            (_ring_point(f"replica-{index}#{v}"), index)
            for index in range(len(self.capacities))
            for v in range(VIRTUAL_NODES)
        ]
        points.sort()
        self._ring_points = [point for point, _ in points]
        self._ring_owners = [owner for _, owner in points]
        self.prefix_hits = 0
        self.ring_routes = 0
        self.spills = 0

    def ring_order(self, key: int) -> list[int]:
        """Replicas in ring order, clockwise from `key`, each once."""
        start = bisect.bisect_left(self._ring_points, key & 0xFFFFFFFFFFFFFFFF)
        order: list[int] = []
        count = len(self._ring_owners)
        for step in range(count):
            owner = self._ring_owners[(start + step) % count]
            if owner not in order:
                order.append(owner)
                if len(order) == len(self.capacities):
                    break
        return order

    def bounds(self, loads: Sequence[float], usable: Sequence[bool], weight: float) -> list[float]:
        """b_i of the module docstring for every replica (0 for an unusable one)."""
        total = sum(load for load, ok in zip(loads, usable, strict=True) if ok) + weight
        capacity = sum(cap for cap, ok in zip(self.capacities, usable, strict=True) if ok) or 1
        saturated = total > capacity
        out = []
        for cap, ok in zip(self.capacities, usable, strict=True):
            if not ok:
                out.append(0.0)
                continue
            bound = math.ceil((1 + self.balance) * total * cap / capacity)
            out.append(float(bound if saturated else min(bound, cap)))
        return out

    def choose(
        self, keys: Sequence[int], loads: Sequence[float], usable: Sequence[bool], weight: float
    ) -> int:
        """The replica for a call with prefix keys `keys` and `weight` sequences; records it."""
        bounds = self.bounds(loads, usable, weight)

        def fits(index: int) -> bool:
            return usable[index] and loads[index] + weight <= bounds[index]

        chosen: int | None = None
        match = self.table.longest(keys)
        if match is not None and fits(match[1]):
            chosen = match[1]
            self.prefix_hits += 1
        if chosen is None:
            ring_key = keys[min(MIN_CHUNKS, len(keys)) - 1]
            for index in self.ring_order(ring_key):
                if fits(index):
                    chosen = index
                    break
            if chosen is not None:
                self.ring_routes += 1
        if chosen is None:
            candidates = [i for i, ok in enumerate(usable) if ok] or list(range(len(loads)))
            chosen = min(candidates, key=lambda i: loads[i] / self.capacities[i])
            self.spills += 1
        self.table.record(keys, chosen)
        return chosen
