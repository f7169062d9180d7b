"""The continuous-batching step model: vLLM's scheduler reduced to what decides throughput.

The model runs in steps (one forward pass each). Planning a step, like vLLM's v1 scheduler with
chunked prefill:
1. every decoding sequence takes one token of the step's budget (`max_num_batched_tokens`);
2. sequences whose prefill is unfinished take prefill chunks from what is left, oldest first;
3. waiting sequences are admitted in arrival order (FCFS, stopping at the first that does not
   fit) while fewer than `max_num_seqs` run, budget is left, and the KV cache can hold the new
   sequence's prompt and output; on admission the prefix cache says how many prompt tokens are
   already computed, and the rest is its prefill, chunked to the remaining budget.

Step time = `step_overhead_s` + `decode_time_per_seq_s` x decoding sequences
+ `prefill_time_per_token_s` x prefill tokens computed in the step (cached tokens are free).
The step that computes a sequence's last prompt token also samples its first output token; each
later step adds one token, so an answer of L tokens finishes L - 1 steps after its prefill.

Simplification: a sequence reserves KV blocks for its whole prompt and output when admitted
(the simulator knows the output length); vLLM allocates lazily and preempts instead, so near the
KV limit the simulator runs slightly fewer sequences at once.

Cost per step is O(sequences prefilling + sequences finishing) plus O(log n) per finish: decoding
sequences sit in a heap keyed by the step at which they finish, so nothing is done per token.
The same class runs live (driven by `step_loop.StepLoop` in real time) and offline (`limit.py`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

from backends.simulated.config import SimulatedServerConfig
from backends.simulated.prefix_cache import PrefixCache

WAITING = 0
PREFILLING = 1
DECODING = 2
FINISHED = 3
CANCELLED = 4


@dataclass(slots=True, eq=False)
class SequenceWork:
    """One sequence to generate: a prompt and the number of tokens its answer will have.

    `cached_tokens` is either given (offline workloads) or looked up in the prefix cache with
    `block_keys` at admission; `generated_block_keys` (blocks filled by the answer) enter the
    prefix cache when the sequence finishes. `owner` is whatever the caller wants back when it
    finishes. The remaining fields are the batcher's bookkeeping.
    """

    prompt_tokens: int
    output_tokens: int
    block_keys: tuple[int, ...] = ()
    cached_tokens: int | None = None
    generated_block_keys: tuple[int, ...] = ()
    owner: Any = None
    state: int = WAITING
    prefill_remaining: int = 0
    kv_blocks: int = 0
    finish_step: int = 0


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What the next step computes and how long it takes in simulated seconds."""

    duration_s: float
    prefill_tokens: int
    decode_sequences: int
    admitted: int

    @property
    def is_empty(self) -> bool:
        return self.prefill_tokens == 0 and self.decode_sequences == 0


class ContinuousBatcher:
    """The scheduler and cost model; call `plan_step`, let its time pass, then `complete_step`."""

    def __init__(self, config: SimulatedServerConfig, prefix_cache: PrefixCache | None) -> None:
        self._max_num_seqs = config.max_num_seqs
        self._max_batched_tokens = config.max_num_batched_tokens
        self._block_size = config.block_size
        self._kv_capacity = config.kv_cache_blocks
        self._step_overhead_s = config.step_overhead_s
        self._decode_time_per_seq_s = config.decode_time_per_seq_s
        self._prefill_time_per_token_s = config.prefill_time_per_token_s
        self.prefix_cache = prefix_cache
        self._waiting: deque[SequenceWork] = deque()
        self._prefilling: list[SequenceWork] = []
        self._decoding: list[tuple[int, int, SequenceWork]] = []
        self._serial = itertools.count()
        self._planned_chunks: list[tuple[SequenceWork, int]] = []
        self._planned_decodes = 0
        self.num_waiting = 0
        self.num_decoding = 0
        self.kv_blocks_used = 0
        self.steps = 0
        self.busy_s = 0.0
        self.prompt_tokens_admitted = 0
        self.prefill_tokens_computed = 0
        self.generation_tokens = 0

    @property
    def num_running(self) -> int:
        return len(self._prefilling) + self.num_decoding

    @property
    def has_work(self) -> bool:
        return self.num_waiting > 0 or self.num_running > 0

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_blocks_used / self._kv_capacity

    def submit(self, seq: SequenceWork) -> None:
        """Queue a sequence; it is admitted by a later `plan_step`."""
        seq.state = WAITING
        self._waiting.append(seq)
        self.num_waiting += 1

    def cancel(self, seq: SequenceWork) -> None:
        """Abort a sequence (its client went away): it stops using a slot and KV blocks now."""
        if seq.state == WAITING:
            self.num_waiting -= 1  # removed from the deque lazily, when it reaches the head
        elif seq.state == PREFILLING:
            self._prefilling.remove(seq)
            self.kv_blocks_used -= seq.kv_blocks
        elif seq.state == DECODING:
            self.num_decoding -= 1  # its heap entry is dropped lazily
            self.kv_blocks_used -= seq.kv_blocks
        else:
            return
        seq.state = CANCELLED

    def drop_all(self) -> list[SequenceWork]:
        """Forget all queued and running work (a crash); return the dropped sequences."""
        dropped = [s for s in self._waiting if s.state == WAITING]
        dropped.extend(self._prefilling)
        dropped.extend(seq for _, _, seq in self._decoding if seq.state == DECODING)
        for seq in dropped:
            seq.state = CANCELLED
        self._waiting.clear()
        self._prefilling = []
        self._decoding = []
        self._planned_chunks = []
        self._planned_decodes = 0
        self.num_waiting = self.num_decoding = self.kv_blocks_used = 0
        return dropped

    def plan_step(self) -> StepPlan:
        """Choose the next step's batch (admitting waiting sequences) and return its cost."""
        budget = self._max_batched_tokens - self.num_decoding
        chunks: list[tuple[SequenceWork, int]] = []
        prefill_tokens = 0
        for seq in self._prefilling:
            if budget <= 0:
                break
            chunk = min(seq.prefill_remaining, budget)
            chunks.append((seq, chunk))
            budget -= chunk
            prefill_tokens += chunk
        running = self.num_running
        admitted = 0
        waiting = self._waiting
        while waiting and budget > 0 and running < self._max_num_seqs:
            seq = waiting[0]
            if seq.state == CANCELLED:
                waiting.popleft()
                continue
            need = -(-(seq.prompt_tokens + seq.output_tokens) // self._block_size)
            if self.kv_blocks_used + need > self._kv_capacity:
                break
            waiting.popleft()
            self.num_waiting -= 1
            self._admit(seq, need)
            running += 1
            admitted += 1
            chunk = min(seq.prefill_remaining, budget)
            chunks.append((seq, chunk))
            budget -= chunk
            prefill_tokens += chunk
        self._planned_chunks = chunks
        self._planned_decodes = self.num_decoding
        decodes = self.num_decoding
        if prefill_tokens == 0 and decodes == 0:
            return StepPlan(0.0, 0, 0, admitted)
        duration = (
            self._step_overhead_s
            + self._decode_time_per_seq_s * decodes
            + self._prefill_time_per_token_s * prefill_tokens
        )
        return StepPlan(duration, prefill_tokens, decodes, admitted)

    def complete_step(self, plan: StepPlan) -> list[SequenceWork]:
        """Apply the planned step; return the sequences that finished in it, in finishing order."""
        if plan.is_empty:
            return []
        self.steps += 1
        self.busy_s += plan.duration_s
        self.prefill_tokens_computed += plan.prefill_tokens
        step = self.steps
        finished: list[SequenceWork] = []
        generated = self._planned_decodes
        any_prefill_done = False
        for seq, chunk in self._planned_chunks:
            if seq.state != PREFILLING:
                continue
            seq.prefill_remaining -= chunk
            if seq.prefill_remaining > 0:
                continue
            any_prefill_done = True
            generated += 1
            if seq.output_tokens <= 1:
                self._finish(seq, finished)
            else:
                seq.state = DECODING
                seq.finish_step = step + seq.output_tokens - 1
                heapq.heappush(self._decoding, (seq.finish_step, next(self._serial), seq))
                self.num_decoding += 1
        if any_prefill_done:
            self._prefilling = [s for s in self._prefilling if s.state == PREFILLING]
        decoding = self._decoding
        while decoding and decoding[0][0] <= step:
            seq = heapq.heappop(decoding)[2]
            if seq.state == DECODING:
                self.num_decoding -= 1
                self._finish(seq, finished)
        self.generation_tokens += generated
        self._planned_chunks = []
        return finished

    def _admit(self, seq: SequenceWork, kv_blocks: int) -> None:
        if seq.cached_tokens is None:
            if self.prefix_cache is not None:
                seq.cached_tokens = self.prefix_cache.admit(seq.block_keys, seq.prompt_tokens)
            else:
                seq.cached_tokens = 0
        seq.cached_tokens = max(0, min(seq.cached_tokens, seq.prompt_tokens - 1))
        seq.prefill_remaining = seq.prompt_tokens - seq.cached_tokens
        seq.kv_blocks = kv_blocks
        seq.state = PREFILLING
        self.kv_blocks_used += kv_blocks
        self.prompt_tokens_admitted += seq.prompt_tokens
        self._prefilling.append(seq)

    def _finish(self, seq: SequenceWork, finished: list[SequenceWork]) -> None:
        seq.state = FINISHED
        self.kv_blocks_used -= seq.kv_blocks
        if self.prefix_cache is not None and seq.generated_block_keys:
            self.prefix_cache.insert(seq.generated_block_keys)
        finished.append(seq)
