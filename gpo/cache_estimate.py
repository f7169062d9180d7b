"""How many prompt tokens a provider's prompt cache will serve, for the dry-run estimate.

Providers cache the leading part of a prompt that an earlier prompt shared, in fixed steps and
only past a threshold: OpenAI caches prompts of at least 1,024 tokens, in 128-token increments;
vLLM's automatic prefix caching (and the simulated server) caches full blocks of 16 tokens and
always recomputes the last prompt token. A `PromptCacheRule` turns "this prompt shares N leading
tokens with one sent just before" into the tokens reported cached.

In a GPO run the shared prefixes are: a chain's second turn, which repeats the first turn and its
answer; first turns of one instruction over many samples, which share the template and (where the
instruction leads) the instruction; and the optimizer's meta-prompts, which share their header.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PromptCacheRule:
    """`block_tokens`: the step in which cached tokens are counted; `min_tokens`: the shortest
    prompt that is cached at all."""

    block_tokens: int = 128
    min_tokens: int = 1024

    def cached(self, shared_tokens: float, prompt_tokens: float) -> float:
        """Tokens reported cached for a prompt of `prompt_tokens` whose first `shared_tokens`
        an earlier prompt sent (the last prompt token is always computed)."""
        if prompt_tokens < self.min_tokens or shared_tokens <= 0:
            return 0.0
        usable = min(shared_tokens, prompt_tokens - 1)
        return float(int(usable // self.block_tokens) * self.block_tokens)


OPENAI_CACHE = PromptCacheRule(block_tokens=128, min_tokens=1024)
"""OpenAI's documented rule (prompts of 1,024 tokens or more, in 128-token steps)."""
VLLM_CACHE = PromptCacheRule(block_tokens=16, min_tokens=0)
"""vLLM's automatic prefix caching with its default block size (and the simulated server's)."""
NO_CACHE = PromptCacheRule(block_tokens=1, min_tokens=2**62)
"""A provider that caches nothing."""


def shared_prefix(first: str, second: str) -> str:
    """The text two prompts begin with (character by character, not path components)."""
    length = min(len(first), len(second))
    index = 0
    while index < length and first[index] == second[index]:
        index += 1
    return first[:index]
