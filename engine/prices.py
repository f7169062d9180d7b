"""Dollar prices: per-million-token prices for hosted models, $/GPU-hour for local servers.

The built-in table covers common hosted models; users extend or override it with a JSON file
`{"model": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}` or
`{"model": {"gpu_hour_usd": 2.5, "gpus": 1}}` for a model served on their own hardware, whose cost
is its GPU time (the run's wall time) rather than its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from backends.errors import ConfigError

BATCH_PRICE_FACTOR = 0.5
"""The Batch API's price as a share of the standard one (OpenAI: half)."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    gpu_hour_usd: float = 0.0
    gpus: int = 1

    def token_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6

    def batch_token_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """BATCH-HOOK (h/batch): tokens answered through the Batch API, at half the price
        (OpenAI's batch discount) until the table has batch price columns."""
        return self.token_cost(prompt_tokens, completion_tokens) * BATCH_PRICE_FACTOR


BUILTIN_PRICES: dict[str, ModelPrice] = {
    "gpt-3.5-turbo": ModelPrice(0.5, 1.5),
    "gpt-4": ModelPrice(30.0, 60.0),
    "gpt-4-turbo": ModelPrice(10.0, 30.0),
    "gpt-4o": ModelPrice(2.5, 10.0),
    "gpt-4o-mini": ModelPrice(0.15, 0.6),
    "gpt-4.1": ModelPrice(2.0, 8.0),
    "gpt-4.1-mini": ModelPrice(0.4, 1.6),
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
                known = "input_per_mtok, output_per_mtok, gpu_hour_usd, gpus"
                raise ConfigError(
                    f"price table {path}, model {model!r}: {error}; known fields: {known}"
                ) from None
        return cls(prices)
