"""Dollar prices: per-million-token prices for hosted models, $/GPU-hour for local servers.

The built-in table covers common hosted models; users extend or override it with a JSON file
`{"model": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}` or
`{"model": {"gpu_hour_usd": 2.5, "gpus": 1}}` for a model served on their own hardware, whose cost
is its GPU time (the run's wall time) rather than its tokens.

Hosted APIs bill three more ways, each a column of the table:

- `cached_input_per_mtok`: prompt tokens the provider served from its prompt cache
  (`usage.prompt_tokens_details.cached_tokens`). Where the table has no figure for a model it is
  the input price (no discount assumed: an estimate never undercounts); the built-in models carry
  their provider's documented cached price.
- Reasoning tokens (`usage.completion_tokens_details.reasoning_tokens`) are part of the completion
  tokens and billed as output, as OpenAI bills them; the ledger shows them separately.
- `batch_input_per_mtok`, `batch_output_per_mtok`, `batch_cached_input_per_mtok`: calls sent
  through a Batch API (`billing="batch"` in the ledger). Where not given: half the list prices,
  OpenAI's Batch API discount.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from backends.errors import ConfigError

BILLINGS = ("standard", "batch")
"""How a call is billed: at the list price, or through a Batch API."""
BATCH_DISCOUNT = 0.5
"""A Batch API's price as a share of the list price where the table gives none (OpenAI's)."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Dollars per million tokens (or per GPU-hour) of one model; None: derived (module doc)."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    gpu_hour_usd: float = 0.0
    gpus: int = 1
    cached_input_per_mtok: float | None = None
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None
    batch_cached_input_per_mtok: float | None = None

    def rates(self, billing: str = "standard") -> tuple[float, float, float]:
        """(input, cached input, output) dollars per million tokens under `billing`."""
        cached = (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else (self.cached_input_per_mtok)
        )
        if billing == "standard":
            return self.input_per_mtok, cached, self.output_per_mtok
        if billing != "batch":
            raise ValueError(f"billing {billing!r} is not one of {', '.join(BILLINGS)}")
        batch_input = _or(self.batch_input_per_mtok, self.input_per_mtok * BATCH_DISCOUNT)
        batch_output = _or(self.batch_output_per_mtok, self.output_per_mtok * BATCH_DISCOUNT)
        return (
            batch_input,
            _or(self.batch_cached_input_per_mtok, cached * BATCH_DISCOUNT),
            (batch_output),
        )

    def token_cost(
        self,
        prompt_tokens: float,
        completion_tokens: float,
        cached_prompt_tokens: float = 0,
        billing: str = "standard",
    ) -> float:
        """Dollars of these tokens; `cached_prompt_tokens` are part of `prompt_tokens`."""
        input_rate, cached_rate, output_rate = self.rates(billing)
        cached = min(max(cached_prompt_tokens, 0), prompt_tokens)
        return (
            (prompt_tokens - cached) * input_rate
            + cached * cached_rate
            + completion_tokens * output_rate
        ) / 1e6


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


BUILTIN_PRICES: dict[str, ModelPrice] = {
    # No prompt caching on these: cached input costs the input price.
    "gpt-3.5-turbo": ModelPrice(0.5, 1.5),
    "gpt-4": ModelPrice(30.0, 60.0),
    "gpt-4-turbo": ModelPrice(10.0, 30.0),
    # OpenAI's published cached-input prices: half the input price for the 4o family, a quarter
    # for 4.1 and the o4 family, a tenth for the 5 family.
    "gpt-4o": ModelPrice(2.5, 10.0, cached_input_per_mtok=1.25),
    "gpt-4o-mini": ModelPrice(0.15, 0.6, cached_input_per_mtok=0.075),
    "gpt-4.1": ModelPrice(2.0, 8.0, cached_input_per_mtok=0.5),
    "gpt-4.1-mini": ModelPrice(0.4, 1.6, cached_input_per_mtok=0.1),
    "gpt-4.1-nano": ModelPrice(0.1, 0.4, cached_input_per_mtok=0.025),
    "o3-mini": ModelPrice(1.1, 4.4, cached_input_per_mtok=0.55),
    "o4-mini": ModelPrice(1.1, 4.4, cached_input_per_mtok=0.275),
    "gpt-5": ModelPrice(1.25, 10.0, cached_input_per_mtok=0.125),
    "gpt-5-mini": ModelPrice(0.25, 2.0, cached_input_per_mtok=0.025),
}


class PriceTable:
    """Model name -> `ModelPrice`; unknown models cost nothing and are reported as unpriced."""

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices = dict(BUILTIN_PRICES)
        if prices:
            self._prices.update(prices)

    def price(self, model: str) -> ModelPrice | None:
        if model in self._prices:
            return self._prices[model]
        # Hosted APIs answer with dated names such as gpt-4o-mini-2024-07-18.
        matches = [name for name in self._prices if model.startswith(name + "-")]
        return self._prices[max(matches, key=len)] if matches else None

    def set(self, model: str, price: ModelPrice) -> None:
        self._prices[model] = price

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        path = Path(path)
        try:
            raw = orjson.loads(path.read_bytes())
        except OSError as error:
            raise ConfigError(f"cannot read price table {path}: {error}") from None
        except orjson.JSONDecodeError as error:
            raise ConfigError(f"price table {path} is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"price table {path} must be a JSON object of model -> prices")
        prices = {}
        for model, fields in raw.items():
            try:
                prices[model] = ModelPrice(**fields)
            except TypeError as error:
                known = ", ".join(ModelPrice.__slots__)
                raise ConfigError(
                    f"price table {path}, model {model!r}: {error}; known fields: {known}"
                ) from None
        return cls(prices)
