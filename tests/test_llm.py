"""The LLM layer against a real HTTP server on loopback: cache, retries, failures, pacing, budget."""

from __future__ import annotations

import asyncio
import time

import pytest
from fake_openai import FakeOpenAI, Reply, user_text

from distillery.cache import canonical_request, connect, request_key
from distillery.cost import Pricing, lookup_price
from distillery.errors import UserError
from distillery.llm import LLM, BudgetReached, ChatRequest, EndpointOptions, retry_after_seconds


def options(server: FakeOpenAI, **changes) -> EndpointOptions:
    base = {"model": "gpt-4o-mini", "base_url": server.base_url, "retry_base_delay": 0.01, "retry_max_delay": 0.05}
    return EndpointOptions(**{**base, **changes})


def ask(llm_options: EndpointOptions, cache_path, prompts: list[str], sample: int = 0):
    async def go():
        async with LLM(llm_options, cache_path) as llm:
            results = await asyncio.gather(
                *(llm.chat(ChatRequest([{"role": "user", "content": p}], sample=sample)) for p in prompts)
            )
            return results, llm.stats

    return asyncio.run(go())


def test_answers_are_cached_and_never_sent_twice(fake_server, tmp_path):
    cache = tmp_path / "c.sqlite"
    first, stats = ask(options(fake_server), cache, ["a", "b", "c"])
    assert [r.text for r in first] == ["ANSWER: a", "ANSWER: b", "ANSWER: c"]
    assert (stats.sent, stats.cached) == (3, 0)
    again, stats = ask(options(fake_server), cache, ["a", "b", "c"])
    assert [r.text for r in again] == [r.text for r in first]
    assert (stats.sent, stats.cached) == (0, 3)
    assert len(fake_server.requests) == 3


def test_sample_index_and_parameters_make_distinct_requests(fake_server, tmp_path):
    cache = tmp_path / "c.sqlite"
    ask(options(fake_server), cache, ["a"], sample=0)
    ask(options(fake_server), cache, ["a"], sample=1)
    ask(options(fake_server, temperature=0.2), cache, ["a"], sample=0)
    assert len(fake_server.requests) == 3
    assert fake_server.requests[2]["temperature"] == 0.2


def test_identical_concurrent_requests_share_one_send(fake_server, tmp_path):
    fake_server.latency = 0.1
    results, stats = ask(options(fake_server), tmp_path / "c.sqlite", ["same"] * 5)
    assert {r.text for r in results} == {"ANSWER: same"}
    assert len(fake_server.requests) == 1


def test_retries_honour_retry_after_then_succeed(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=429, headers={"Retry-After": "1"}) if n == 1 else "fine"
    started = time.monotonic()
    results, stats = ask(options(fake_server), tmp_path / "c.sqlite", ["x"])
    assert results[0].text == "fine"
    assert stats.retries == 1
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("fault", [Reply(status=500), Reply(status=503), Reply(malformed=True), Reply(drop=True)])
def test_transient_faults_are_retried(fake_server, tmp_path, fault):
    fake_server.script = lambda body, n: fault if n <= 2 else "recovered"
    results, stats = ask(options(fake_server), tmp_path / "c.sqlite", ["x"])
    assert results[0].text == "recovered"
    assert stats.retries == 2 and stats.failed == 0


def test_failure_after_last_retry_is_counted_not_empty(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=500) if user_text(body) == "bad" else "good"
    results, stats = ask(options(fake_server, max_retries=2), tmp_path / "c.sqlite", ["good", "bad"])
    assert results[0].ok and results[0].text == "good"
    assert not results[1].ok and results[1].text is None and "500" in results[1].error
    assert stats.failed == 1 and stats.failures_by_kind == {"http_500": 1}
    assert sum(1 for body in fake_server.requests if user_text(body) == "bad") == 3
    again, stats = ask(options(fake_server, max_retries=0), tmp_path / "c.sqlite", ["bad"])
    assert not again[0].ok, "failures are not cached: a re-run tries again"


def test_rejected_key_is_a_user_error_without_the_key(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-very-secret-123")
    fake_server.script = lambda body, n: Reply(status=401)
    with pytest.raises(UserError) as caught:
        ask(options(fake_server, api_key_env="MY_KEY"), tmp_path / "c.sqlite", ["x"])
    assert "401" in str(caught.value) and "sk-very-secret-123" not in str(caught.value)
    assert {k.lower(): v for k, v in fake_server.headers[0].items()}["authorization"] == "Bearer sk-very-secret-123"


def test_unreachable_endpoint_is_a_user_error(tmp_path):
    dead = EndpointOptions(model="m", base_url="http://127.0.0.1:9/v1", max_retries=1, retry_base_delay=0.01)
    with pytest.raises(UserError, match="cannot reach"):
        ask(dead, tmp_path / "c.sqlite", ["x"])


def test_missing_model_explains_how_to_configure(monkeypatch):
    monkeypatch.delenv("DISTILLERY_MODEL", raising=False)
    with pytest.raises(UserError, match="--model"):
        EndpointOptions().resolve()


def test_budget_stops_before_sending_more(fake_server, tmp_path):
    fake_server.script = lambda body, n: " ".join(["word"] * 1000)
    budget = options(fake_server, concurrency=1, max_cost=0.0005, price_input=0.0, price_output=1.0)
    with pytest.raises(BudgetReached):
        ask(budget, tmp_path / "c.sqlite", [f"p{i}" for i in range(5)])
    assert len(fake_server.requests) == 1


def test_rpm_spaces_requests(fake_server, tmp_path):
    started = time.monotonic()
    ask(options(fake_server, rpm=600), tmp_path / "c.sqlite", [f"p{i}" for i in range(5)])
    assert time.monotonic() - started >= 0.4


def test_concurrency_limit_is_respected(fake_server, tmp_path):
    fake_server.latency = 0.2
    started = time.monotonic()
    ask(options(fake_server, concurrency=2), tmp_path / "c.sqlite", [f"p{i}" for i in range(6)])
    assert time.monotonic() - started >= 0.6


def test_usage_and_cost_come_from_responses(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(text="hi", usage={"prompt_tokens": 1000, "completion_tokens": 2000})
    _, stats = ask(options(fake_server), tmp_path / "c.sqlite", ["x"])
    assert (stats.prompt_tokens, stats.completion_tokens) == (1000, 2000)
    assert stats.cost_usd == pytest.approx((1000 * 0.15 + 2000 * 0.60) / 1e6)


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None


def test_price_table_prefers_longest_family():
    assert lookup_price("gpt-4o-mini-2024-07-18") == lookup_price("gpt-4o-mini") != lookup_price("gpt-4o")
    assert lookup_price("openai/gpt-4o") == lookup_price("gpt-4o")
    assert lookup_price("my-local-llama") is None
    assert Pricing.for_model("my-local-llama", None, None).cost(10**6, 10**6) == 0.0
    assert Pricing.for_model("gpt-4o", 1.0, None).cost(10**6, 0) == 1.0


def test_canonical_request_ignores_unset_params(tmp_path):
    messages = [{"role": "user", "content": "x"}]
    assert canonical_request("m", messages, {"temperature": None}, 0) == canonical_request("m", messages, {}, 0)
    assert request_key(canonical_request("m", messages, {}, 0)) != request_key(canonical_request("m", messages, {}, 1))
    connection = connect(tmp_path / "state.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_max_tokens_is_renamed_for_models_that_refuse_it(fake_server, tmp_path):
    def script(body, number):
        if "max_tokens" in body:
            return Reply(status=400, error="Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens'.")
        return f"limit {body['max_completion_tokens']}"

    fake_server.script = script
    results, stats = ask(options(fake_server, max_tokens=64), tmp_path / "c.sqlite", ["a", "b"])
    assert [r.text for r in results] == ["limit 64", "limit 64"]
    assert stats.failed == 0
    assert sum("max_tokens" in body for body in fake_server.requests) <= 2
