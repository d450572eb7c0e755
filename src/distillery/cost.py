"""Token and cost accounting for a run.

Prices are USD per million tokens, (input, output). The built-in table covers common teacher models as
published by their vendors at the time of writing; prices change, so `--price-input/--price-output`
always win, and a model the table does not know costs 0 and says so in the summary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, fields
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
    "claude-opus-4-5": (5.00, 25.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
}


# The batch APIs distillery speaks (OpenAI's, Azure OpenAI's and DashScope's OpenAI-compatible batch files,
# Anthropic's Message Batches) bill every model at half its real-time price, for answers within 24 hours.
BATCH_PRICE_FACTOR = 0.5


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

    def batched(self) -> Pricing:
        """What the same tokens cost through a provider's batch API (real-time prices, table or options, halved)."""
        return Pricing(self.input_per_million * BATCH_PRICE_FACTOR, self.output_per_million * BATCH_PRICE_FACTOR,
                       f"{self.source}, batch price ({BATCH_PRICE_FACTOR:.0%})")


@dataclass
class Budget:
    """--max-cost for every client of one run: a request is sent only while what was spent plus what the
    requests in flight may still cost is under the limit, so a run overshoots by at most one request.

    `blind` counts requests in flight whose cost could not be estimated (no --max-tokens and no answer
    seen yet); while one is out, nothing else is sent.
    """

    limit: float
    reserved: float = 0.0
    in_flight: int = 0
    blind: int = 0
    waiters: list[Any] = field(default_factory=list)

    def allows(self, spent: float, expected: float | None) -> bool:
        if self.blind or (expected is None and self.in_flight):
            return False
        return spent + self.reserved < self.limit

    def take(self, expected: float | None) -> None:
        self.in_flight += 1
        self.blind += expected is None
        self.reserved += expected or 0.0

    async def reserve(
        self, expected: float | None, spent: Callable[[], float], stopped: Callable[[], BaseException | None],
    ) -> bool:
        """Wait until the limit covers this request on top of those in flight, then hold its share. False:
        the limit is reached and nothing is in flight to free any. The one reservation interface a client
        calls, so a budget shared by a cluster's workers (`ray_executor.SharedBudget`) slots in here."""
        while not self.allows(spent(), expected):
            if not self.in_flight:
                return False
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter
            reason = stopped()
            if reason is not None:
                raise reason
        self.take(expected)
        return True

    def release(self, expected: float | None, spent: float) -> None:
        """A reserved request ended; `spent` is what its client has spent so far, its cost included."""
        self.give_back(expected)

    def give_back(self, expected: float | None) -> None:
        """A request ended (its real cost is now in RunStats): free its reservation and wake the waiters."""
        self.in_flight -= 1
        self.blind -= expected is None
        self.reserved = max(0.0, self.reserved - (expected or 0.0)) if self.in_flight else 0.0
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class RunStats:
    """What one run did with the endpoint; cached answers cost nothing and are counted apart.

    `estimated_usage` counts answers that came without `usage`: their tokens (and cost) are estimates.
    `batched` counts answers that came through a provider batch (`--batch`), `resubmitted` the requests of
    expired or failed batches sent again, and `batch_saved_usd` what those answers would have cost more in
    real time.
    """

    sent: int = 0
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated_usage: int = 0
    batched: int = 0
    resubmitted: int = 0
    batch_saved_usd: float = 0.0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    budget: Budget | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "budget"}
        values["cost_usd"] = round(self.cost_usd, 6)
        values["batch_saved_usd"] = round(self.batch_saved_usd, 6)
        values["failures_by_kind"] = dict(self.failures_by_kind)
        return values
