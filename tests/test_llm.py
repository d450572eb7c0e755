"""The LLM layer against a real HTTP server on loopback: cache, retries, failures, pacing, budget."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import sqlite3
import time
from urllib.parse import quote

import pytest
from fake_openai import FakeOpenAI, Reply, user_text

from distillery.cache import canonical_request, connect, request_key
from distillery.cost import Pricing, lookup_price
from distillery.errors import UserError
from distillery.llm import LLM, BudgetReached, ChatRequest, EndpointOptions, retry_after_seconds, run_bounded


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


def test_an_answer_that_trickles_in_is_bounded_by_the_timeout(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(text="slow " * 20, trickle=0.05)
    results, stats = ask(options(fake_server, timeout=1, max_retries=0), tmp_path / "c.sqlite", ["x"])
    assert not results[0].ok and "timed out after 1s" in results[0].error
    assert stats.failures_by_kind == {"timeout": 1}


@pytest.mark.parametrize("fault", [Reply(reset_mid_body=True), Reply(text="late", trickle=0.2)])
def test_resets_and_trickles_are_retried(fake_server, tmp_path, fault):
    fake_server.script = lambda body, n: fault if n == 1 else "recovered"
    results, stats = ask(options(fake_server, timeout=0.5), tmp_path / "c.sqlite", ["x"])
    assert results[0].text == "recovered" and stats.retries == 1


def test_a_reset_on_every_request_says_what_happened(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(reset_mid_body=True)
    with pytest.raises(UserError) as caught:
        ask(options(fake_server, max_retries=1), tmp_path / "c.sqlite", ["x"])
    message = str(caught.value)
    assert "cannot reach" not in message
    assert "closed before the answer was complete" in message and "received" in message


SECRET = "sk-SECRET-canary-1234567890abcdefXYZ"


def test_an_echoed_key_is_masked_before_the_message_is_cut(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    for padding in range(195, 240, 3):
        fake_server.script = lambda body, n, padding=padding: Reply(status=500, error="x" * padding, echo_auth=True)
        results, _ = ask(options(fake_server, api_key_env="MY_KEY", max_retries=0), tmp_path / "c.sqlite", ["x"])
        assert "sk-SECRET" not in results[0].error and "sk-SEC" not in results[0].error, padding


def test_encoded_and_cut_short_forms_of_a_secret_are_masked():
    from distillery.llm import Redactor

    redact = Redactor([SECRET])
    for prefix in ("", "a", "ab", "Authorization: Bearer "):
        encoded = base64.b64encode((prefix + SECRET + " tail").encode()).decode()
        assert encoded[len(prefix) * 4 // 3 + 4 : len(prefix) * 4 // 3 + 16] not in redact(f"header {encoded}")
    assert "canary" not in redact("key=" + quote(SECRET + "/+", safe=""))
    assert "canary" not in redact("received Bearer " + SECRET[:14] + "… (truncated)")
    assert redact("nothing secret here") == "nothing secret here"


def test_credentials_in_the_base_url_are_sent_as_basic_auth_and_never_shown(fake_server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = fake_server.base_url.replace("//", "//bob:pa55word-x@")
    fake_server.script = lambda body, n: Reply(status=500, echo_auth=True)
    results, _ = ask(options(fake_server, base_url=url, max_retries=0), tmp_path / "c.sqlite", ["x"])
    header = {k.lower(): v for k, v in fake_server.headers[0].items()}["authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")) == b"bob:pa55word-x"
    assert "pa55word" not in results[0].error and header.removeprefix("Basic ") not in results[0].error
    dead = options(fake_server, base_url="http://bob:pa55word-x@127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(UserError) as caught:
        ask(dead, tmp_path / "d.sqlite", ["x"])
    assert "cannot reach http://***@127.0.0.1:9/v1" in str(caught.value) and "pa55word" not in str(caught.value)


def run_all(llm_options: EndpointOptions, cache_path, prompts: list[str], before=None):
    """Like the recipes: every prompt through run_bounded with twice --concurrency jobs alive."""

    async def go():
        async with LLM(llm_options, cache_path) as llm:
            if before:
                before(llm)

            async def one(prompt: str) -> None:
                await llm.chat(ChatRequest([{"role": "user", "content": prompt}]))

            try:
                await run_bounded(prompts, one, limit=2 * llm_options.concurrency)
            finally:
                stats = llm.stats
        return stats

    return asyncio.run(go())


def test_nothing_more_is_sent_after_a_full_disk(fake_server, tmp_path):
    fake_server.latency = 0.1

    def fill_disk(llm: LLM) -> None:
        """SQLite's own "database or disk is full", from a page limit reached before the first answer."""
        connection = llm.cache.connection
        connection.execute(f"PRAGMA max_page_count = {connection.execute('PRAGMA page_count').fetchone()[0]}")
        with contextlib.suppress(sqlite3.OperationalError):
            for number in itertools.count():
                connection.execute("INSERT INTO responses VALUES (?, 'pad', '{}', '', NULL, 0, 0, 0)", (f"{number}",))

    with pytest.raises(UserError, match="cannot store the run's state: database or disk is full"):
        run_all(options(fake_server, concurrency=8), tmp_path / "c.sqlite", [f"p{i}" for i in range(64)], fill_disk)
    assert len(fake_server.requests) == 8, "only the requests already in flight were paid for"


def test_nothing_more_is_sent_after_a_rejected_key(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=401)
    with pytest.raises(UserError, match="401"):
        run_all(options(fake_server, concurrency=4), tmp_path / "c.sqlite", [f"p{i}" for i in range(40)])
    assert len(fake_server.requests) <= 4


def test_a_refusal_after_answers_is_a_request_failure_not_a_fatal_error(fake_server, tmp_path):
    """A 404 on one request of an endpoint that has answered others costs that request only."""
    fake_server.script = lambda body, n: Reply(status=404) if user_text(body) == "gone" else Reply(text="ok")

    async def one_by_one():
        async with LLM(options(fake_server, max_retries=0), tmp_path / "c.sqlite") as llm:
            answers = [await llm.chat(ChatRequest([{"role": "user", "content": p}])) for p in ("first", "gone", "last")]
            return answers, llm.stats

    results, stats = asyncio.run(one_by_one())
    assert [r.ok for r in results] == [True, False, True]
    assert "HTTP 404" in results[1].error and stats.failed == 1


def test_budget_reserves_requests_in_flight(fake_server, tmp_path):
    fake_server.latency = 0.05
    fake_server.script = lambda body, n: Reply(text="x", usage={"prompt_tokens": 0, "completion_tokens": 1000})
    budget = options(fake_server, concurrency=16, max_cost=0.0105, price_input=0.0, price_output=1.0)
    with pytest.raises(BudgetReached) as caught:
        run_all(budget, tmp_path / "c.sqlite", [f"p{i}" for i in range(100)])
    spent = caught.value.stats.cost_usd
    assert 0.0105 <= spent <= 0.0105 + 0.001
    assert len(fake_server.requests) == 11
    assert str(caught.value) == f"--max-cost 0.0105 reached (spent ${spent:.4f})"


def test_an_answer_without_usage_is_estimated_and_still_charged(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(text="short answer", omit_usage=True)
    prompt = "a long prompt " * 200
    budget = options(fake_server, concurrency=1, max_cost=0.001, price_input=1.0, price_output=0.0)
    with pytest.raises(BudgetReached) as caught:
        run_all(budget, tmp_path / "c.sqlite", [f"{prompt}{i}" for i in range(20)])
    stats = caught.value.stats
    assert stats.estimated_usage == stats.sent > 0 and stats.prompt_tokens >= 600 * stats.sent
    assert stats.cost_usd <= 0.001 + 0.001
