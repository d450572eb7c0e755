"""Token and cost accounting for a run.

Prices are USD per million tokens, (input, output). The built-in table covers common teacher models as
published by their vendors at the time of writing; prices change, so `--price-input/--price-output`
always win, and a model the table does not know costs 0 and says so in the summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "deepseek-chat": (0.28, 0.42),
    "deepseek-reasoner": (0.28, 0.42),
    "qwen-max": (1.60, 6.40),
    "qwen-plus": (0.40, 1.20),
    "qwen-turbo": (0.05, 0.20),
}


def lookup_price(model: str) -> tuple[float, float] | None:
    """Longest known prefix wins, so dated snapshots (gpt-4o-2024-08-06) find their family."""
    name = model.rsplit("/", 1)[-1].lower()
    matches = [known for known in PRICES_PER_MILLION if name == known or name.startswith(known + "-")]
    return PRICES_PER_MILLION[max(matches, key=len)] if matches else None


@dataclass
class Pricing:
    input_per_million: float
    output_per_million: float
    source: str

    @classmethod
    def for_model(cls, model: str, price_input: float | None, price_output: float | None) -> Pricing:
        known = lookup_price(model)
        if price_input is not None or price_output is not None:
            fallback = known or (0.0, 0.0)
            return cls(
                price_input if price_input is not None else fallback[0],
                price_output if price_output is not None else fallback[1],
                "options",
            )
        if known:
            return cls(known[0], known[1], "built-in table")
        return cls(0.0, 0.0, f"unknown model {model!r}: cost not counted (pass --price-input/--price-output)")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


@dataclass
class RunStats:
    """What one run did with the endpoint; cached answers cost nothing and are counted apart."""

    sent: int = 0
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    cost_usd: float = 0.0
    failures_by_kind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["cost_usd"] = round(self.cost_usd, 6)
        return values
