"""Anthropic's Message Batches behind `--batch --provider anthropic`, through the official `anthropic` SDK.

A batch carries its requests inline (`messages.batches.create(requests=[{custom_id, params}])`), so there is
no input file to find it by: its request keys are journaled before `create` is sent and its id as `create`
returns. A run killed in between (or a `create` whose answer was lost) looks through the account's recent
batches, newest first, back to shortly before the journal entry, for one it has not journaled that holds as
many requests; an ended one must also hold exactly those custom_ids. A running one cannot show its
requests, so it is taken on the count alone: were it someone else's, its results would match none of the
keys, and they would be submitted again once it ends; never twice while ours runs.

Results come per request: `succeeded` (the message's text blocks and its token usage, shaped as a Chat
Completions body so the rest of distillery reads one shape), `errored` (a failed request), and `expired`
or `canceled` (never run: resubmitted, or failed when cancelled, as the OpenAI path does).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from distillery.batch import ANTHROPIC_MAX_BYTES, ANTHROPIC_MAX_REQUESTS, CLOCK_SKEW, Polled, Results
from distillery.endpoint import strip_credentials
from distillery.errors import UserError

try:
    import anthropic
except ImportError:  # an optional extra: the message below says how to install it
    anthropic = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from distillery.llm import LLM

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; this is used where --max-tokens is not given
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "content_filter",
           "tool_use": "tool_calls"}


def _sdk() -> Any:
    if anthropic is None:
        raise UserError("--provider anthropic needs the anthropic SDK: pip install 'distillery[anthropic]'")
    return anthropic


def api_root(base_url: str) -> str:
    """The SDK's base URL: ours names the `/v1` root (as Anthropic's OpenAI-compatible endpoint does), the
    SDK adds `/v1/messages/batches` itself."""
    root = strip_credentials(base_url).rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class AnthropicBatches:
    """Message Batches: requests inline, `retrieve` until `ended`, then `results` line by line."""

    name = "anthropic"
    max_requests = ANTHROPIC_MAX_REQUESTS
    max_bytes = ANTHROPIC_MAX_BYTES
    route = "/v1/messages/batches"

    def __init__(self, llm: LLM):
        sdk = _sdk()
        self.llm = llm
        self.status_error: type[Exception] = sdk.APIStatusError
        self.transport_errors: tuple[type[Exception], ...] = (sdk.APITimeoutError, sdk.APIConnectionError)
        self.client = sdk.AsyncAnthropic(api_key=llm.options.api_key() or "not-needed",
                                         base_url=api_root(llm.options.base_url or ""), max_retries=0,
                                         timeout=llm.options.timeout)

    def line(self, key: str, canonical: str) -> bytes:
        """One request as `create` takes it: the system message apart, `max_tokens` always given, `stop` as
        `stop_sequences`; `seed` has no Anthropic equivalent and is not sent."""
        request = json.loads(canonical)
        params = request["params"]
        system = "\n\n".join(str(m["content"]) for m in request["messages"] if m["role"] == "system")
        body: dict[str, Any] = {
            "model": request["model"],
            "max_tokens": params.get("max_tokens") or DEFAULT_MAX_TOKENS,
            "messages": [{"role": m["role"], "content": m["content"]} for m in request["messages"]
                         if m["role"] != "system"],
        }
        if system:
            body["system"] = system
        for name in ("temperature", "top_p"):
            if params.get(name) is not None:
                body[name] = params[name]
        stop = params.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        return json.dumps({"custom_id": key, "params": body}, ensure_ascii=False).encode()

    async def prepare(self, lines: list[bytes]) -> str:
        """Nothing to upload: the journal's input_file stays empty."""
        return ""

    async def create(self, input_file: str, lines: list[bytes]) -> Polled:
        return _polled(await self.client.messages.batches.create(requests=[json.loads(line) for line in lines]))

    async def find(self, input_file: str, keys: set[str], since: float, known: set[str]) -> Polled | None:
        """A batch this run's journal does not name, made since shortly before `since`, holding as many
        requests as `keys` (and, once ended, exactly those custom_ids)."""
        async for batch in self.client.messages.batches.list(limit=100):
            if batch.created_at.timestamp() < since - CLOCK_SKEW:
                return None
            polled = _polled(batch)
            if batch.id in known or polled.total != len(keys):
                continue
            if not polled.ended or await self._holds(batch.id, keys):
                return polled
        return None

    async def _holds(self, batch_id: str, keys: set[str]) -> bool:
        seen = {item.custom_id async for item in await self.client.messages.batches.results(batch_id)}
        return seen == keys

    async def retrieve(self, batch_id: str) -> Polled:
        return _polled(await self.client.messages.batches.retrieve(batch_id))

    async def results(self, polled: Polled) -> Results:
        found = Results({}, {}, {})
        async for item in await self.client.messages.batches.results(polled.id):
            result = item.result
            if result.type == "succeeded":
                found.answers[item.custom_id] = _completion(result.message)
            elif result.type == "errored":
                error = getattr(result.error, "error", None)
                found.errors[item.custom_id] = f"{getattr(error, 'type', 'error')}: {getattr(error, 'message', error)}"
            else:
                found.lost[item.custom_id] = "cancelled" if result.type == "canceled" else str(result.type)
        return found

    async def close(self) -> None:
        await self.client.close()


def _polled(batch: Any) -> Polled:
    counts = batch.request_counts
    failed = counts.errored + counts.expired + counts.canceled
    total = counts.processing + counts.succeeded + failed
    return Polled(batch.id, batch.processing_status, batch.processing_status == "ended", counts.succeeded, failed,
                  total, raw=batch)


def _completion(message: Any) -> dict[str, Any]:
    """A Message as the Chat Completions body `LLM._accept` reads: its text blocks joined, its stop reason in
    OpenAI's words (`max_tokens` is `length`, which the recipes treat as cut off), every input token counted
    as a prompt token (cache writes and reads included)."""
    text = "".join(block.text for block in message.content if getattr(block, "type", None) == "text")
    usage = message.usage
    prompt = usage.input_tokens + (getattr(usage, "cache_creation_input_tokens", None) or 0) + \
        (getattr(usage, "cache_read_input_tokens", None) or 0)
    return {"choices": [{"message": {"role": "assistant", "content": text},
                         "finish_reason": _FINISH.get(message.stop_reason or "", message.stop_reason)}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": usage.output_tokens}}


def cancel(batch_id: str, base_url: str, key: str) -> str:
    """Ask Anthropic to cancel one batch; returns its processing status (`canceling` until it ends)."""
    sdk = _sdk()
    client = sdk.Anthropic(api_key=key, base_url=api_root(base_url))
    try:
        return str(client.messages.batches.cancel(batch_id).processing_status)
    except sdk.APIError as exc:
        raise UserError(f"{base_url}: cannot cancel batch {batch_id}: {exc}") from None
    finally:
        client.close()
