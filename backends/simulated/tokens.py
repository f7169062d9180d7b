"""The simulated server's tokenizer: one token per 4 bytes of UTF-8, rounded up.

It is deliberately crude and cheap (no per-token Python work), and it is exported so that tests
and the engine's client-side cost estimator can compute exactly what the simulated server will
report in `usage`, charge for prefill, and count against a tokens-per-minute limit. Prefix-cache
blocks of `block_size` tokens are therefore `4 * block_size`-byte slices of the UTF-8 prompt.
"""

from __future__ import annotations

BYTES_PER_TOKEN = 4


def count_tokens(text: str) -> int:
    """Tokens in `text`: ceil(len(utf-8 bytes) / 4)."""
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    return (size + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def token_ids(text: str) -> list[int]:
    """The ids of `text`'s tokens: each 4-byte slice read as an integer, so equal ids mean equal
    text (what `/tokenize` answers; there is no BOS)."""
    data = text.encode("utf-8")
    step = BYTES_PER_TOKEN
    return [int.from_bytes(data[i : i + step], "little") for i in range(0, len(data), step)]


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` that is at most `max_tokens` tokens (whole characters kept)."""
    limit = max_tokens * BYTES_PER_TOKEN
    if text.isascii():
        return text[:limit]
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def prefix_block_hashes(
    text: str, block_size: int, known_keys: tuple[int, ...] = ()
) -> tuple[int, ...]:
    """One key per full block of the prompt; key i identifies the prompt's first i+1 blocks.

    Keys are chained (each hashes the previous key with the block's bytes), as vLLM's block hashes
    are, so two prompts share key i exactly when their first i+1 blocks are equal. Keys use
    Python's `hash`, so they are only comparable within one process. `known_keys`, the keys of a
    prefix of `text` already hashed, are taken as they are and the chain goes on after them.
    """
    data = text.encode("utf-8")
    step = block_size * BYTES_PER_TOKEN
    key = known_keys[-1] if known_keys else 0
    keys = list(known_keys)
    for start in range(len(known_keys) * step, len(data) - step + 1, step):
        key = hash((key, data[start : start + step]))
        keys.append(key)
    return tuple(keys)


def generated_block_hashes(
    prompt: str, output: str, block_size: int, prompt_keys: tuple[int, ...]
) -> tuple[int, ...]:
    """Keys of the full blocks a finished sequence adds beyond its prompt's own full blocks.

    vLLM caches every block that fills during decoding too, so a later prompt that repeats this
    prompt and this answer (a chat's next turn) finds them cached. The last generated token is
    sampled but never fed through the model, so its KV does not exist and it is left out.
    """
    computed = prompt + truncate_to_tokens(output, max(0, count_tokens(output) - 1))
    return prefix_block_hashes(computed, block_size, prompt_keys)[len(prompt_keys) :]
