"""A scripted OpenAI-compatible Chat Completions server on 127.0.0.1 for tests and benchmarks.

It runs in a thread of the test process and speaks real HTTP/1.1, so the official SDK, its connection
pool and distillery's retry logic are exercised exactly as against a real endpoint. Faults are injected
by request number or by a script: 429 with Retry-After, 500, slow answers, answers that trickle in a byte
at a time, malformed JSON, dropped connections, connections reset in the middle of the body, error bodies
that echo the request's Authorization header, and answers without `usage`. Every request and every
successful answer is recorded for assertions.

It also speaks the Batch API (`/v1/files`, `/v1/batches`): each line of a batch is answered by the same
script, and the test decides how batches end (`batch_outcomes`: completed, expired or failed with a
fraction answered), how many polls that takes (`batch_polls`), or holds them running (`batch_hold`).
`batch_submitted` counts how often each custom_id was submitted, across every batch.

Anthropic's Message Batches (`/v1/messages/batches`: create, retrieve, results as JSONL, cancel, list) take
the same controls and the same script (its request's `params` stand in for a Chat Completions body, the
system prompt apart); they are kept in `message_batches` and `message_batch_lines`, apart from OpenAI's, and
numbered on their own. A batch expired with a fraction answered gives its other requests the result
`expired`; a cancelled one `canceled`.

Run as a script it serves on its own (`python tests/fake_openai.py --latency 0.5` prints the base URL),
so a benchmark can measure a client's CPU time without the server's.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server does for one request; the defaults are a normal 200 answer."""

    text: str = "ok"
    finish_reason: str = "stop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    malformed: bool = False
    drop: bool = False
    usage: dict[str, int] | None = None
    error: str | None = None
    trickle: float = 0.0
    echo_auth: bool = False
    reset_mid_body: bool = False
    omit_usage: bool = False


Script = Callable[[dict[str, Any], int], "Reply | str"]


def echo_script(body: dict[str, Any], number: int) -> Reply:
    """Answers with a deterministic function of the last user message, so outputs can be checked."""
    return Reply(text="ANSWER: " + body["messages"][-1]["content"])


def completion_echo(body: dict[str, Any], number: int) -> Reply:
    """Raw completions answer with the end of their prompt, so a test can tell which prompt was completed."""
    return Reply(text="COMPLETION of: " + body["prompt"][-40:])


def user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


class FakeOpenAI:
    def __init__(self, script: Script = echo_script, latency: float = 0.0):
        self.script = script
        self.latency = latency
        self.completion_script: Script = completion_echo  # raw `/completions` requests (Magpie)
        self.completions: list[dict[str, Any]] = []  # their bodies, apart from the chat requests
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.answered: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_lines: dict[str, list[dict[str, Any]]] = {}
        self.batch_submitted: Counter[str] = Counter()
        self.batch_outcomes: dict[int, tuple[str, float]] = {}  # batch number (from 1) -> (status, answered)
        self.batch_polls = 1
        self.batch_hold = False
        self.batch_api = True  # False: answer 404 like a server without the Batch API
        self.batch_created = threading.Event()
        self.message_batches: dict[str, dict[str, Any]] = {}
        self.message_batch_lines: dict[str, list[dict[str, Any]]] = {}
        self.message_results: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with server.lock:
                    status, payload = server.batch_get(self.path)
                self._send(status, payload, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                if self.path.startswith(("/v1/files", "/v1/batches", "/v1/messages/batches")):
                    raw = self.rfile.read(length)
                    with server.lock:
                        status, payload = server.batch_post(self.path, raw, self.headers.get("Content-Type", ""))
                    self._send(status, payload, {})
                    return
                body = json.loads(self.rfile.read(length))
                if self.path.endswith("/completions") and not self.path.endswith("/chat/completions"):
                    self._complete(body)
                    return
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    number = len(server.requests)
                reply = server.script(body, number)
                if isinstance(reply, str):
                    reply = Reply(text=reply)
                time.sleep(server.latency + reply.delay)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if reply.status != 200:
                    message = reply.error or f"scripted {reply.status}"
                    if reply.echo_auth:
                        message += f" (request had Authorization: {self.headers.get('Authorization')})"
                    payload = json.dumps({"error": {"message": message, "type": "fake"}})
                    self._send(reply.status, payload.encode(), reply.headers)
                    return
                if reply.malformed:
                    self._send(200, b'{"id": "broken", "choices": [', reply.headers)
                    return
                usage = reply.usage or {
                    "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
                    "completion_tokens": len(reply.text.split()),
                }
                usage = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
                payload: dict[str, Any] = {
                    "id": f"chatcmpl-{number}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.text},
                            "finish_reason": reply.finish_reason,
                        }
                    ],
                }
                if not reply.omit_usage:
                    payload["usage"] = usage
                data = json.dumps(payload).encode()
                if reply.reset_mid_body:
                    self._reset_after(data[: len(data) // 2], len(data))
                    return
                self._send(200, data, reply.headers, reply.trickle)
                with server.lock:
                    server.answered[user_text(body)] += 1

            def _complete(self, body: dict[str, Any]) -> None:
                """A raw text completion: `choices[0].text`, shaped by `completion_script`."""
                with server.lock:
                    server.completions.append(body)
                    number = len(server.completions)
                reply = server.completion_script(body, number)
                if isinstance(reply, str):
                    reply = Reply(text=reply)
                time.sleep(server.latency + reply.delay)
                if reply.status != 200:
                    payload = json.dumps({"error": {"message": reply.error or f"scripted {reply.status}"}})
                    self._send(reply.status, payload.encode(), reply.headers)
                    return
                usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": len(reply.text.split())}
                payload = {"id": f"cmpl-{number}", "object": "text_completion", "model": body.get("model", "fake"),
                           "choices": [{"index": 0, "text": reply.text, "finish_reason": reply.finish_reason}],
                           "usage": {**usage, "total_tokens": sum(usage.values())}}
                self._send(200, json.dumps(payload).encode(), reply.headers)

            def _send(self, status: int, data: bytes, headers: dict[str, str], trickle: float = 0.0) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not trickle:
                    self.wfile.write(data)
                    return
                self.wfile.flush()
                for index in range(len(data)):
                    try:
                        self.wfile.write(data[index : index + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        self.close_connection = True
                        return
                    time.sleep(trickle)

            def _reset_after(self, part: bytes, length: int) -> None:
                """Headers and part of the body, then a TCP reset (SO_LINGER 0) instead of the rest."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(part)
                self.wfile.flush()
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # --- the Batch API (called with self.lock held) -------------------------------------------------------

    def batch_post(self, path: str, raw: bytes, content_type: str) -> tuple[int, bytes]:
        if not self.batch_api:
            return 404, json.dumps({"error": {"message": f"no route {path}"}}).encode()
        if path.startswith("/v1/messages/batches"):
            return self.message_batch_post(path, raw)
        if path == "/v1/files":
            message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
            parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
            data = parts["file"].get_payload(decode=True)
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
            return 200, json.dumps(self._file(file_id, "batch")).encode()
        if path == "/v1/batches":
            request = json.loads(raw)
            lines = [json.loads(line) for line in self.files[request["input_file_id"]].splitlines() if line.strip()]
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batch_lines[batch_id] = lines
            self.batch_submitted.update(line["custom_id"] for line in lines)
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "errors": None,
                "input_file_id": request["input_file_id"], "completion_window": request["completion_window"],
                "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "polls": 0,
            }
            self.batch_created.set()
            return 200, self._batch(batch_id)
        match = re.fullmatch(r"/v1/batches/([^/]+)/cancel", path)
        if match and match[1] in self.batches:
            self.batches[match[1]]["status"] = "cancelled"
            self._finish(match[1], "cancelled", 0.0)
            return 200, self._batch(match[1])
        return 404, json.dumps({"error": {"message": f"no route {path}"}}).encode()

    def batch_get(self, path: str) -> tuple[int, bytes]:
        if path.startswith("/v1/messages/batches") and self.batch_api:
            return self.message_batch_get(path)
        match = re.fullmatch(r"/v1/files/([^/]+)/content", path)
        if match and match[1] in self.files:
            return 200, self.files[match[1]]
        match = re.fullmatch(r"/v1/batches/([^/?]+)", path)
        if match and match[1] in self.batches:
            batch = self.batches[match[1]]
            batch["polls"] += 1
            if batch["status"] not in ("completed", "expired", "failed", "cancelled"):
                batch["status"] = "in_progress"
                if not self.batch_hold and batch["polls"] >= self.batch_polls:
                    number = int(match[1].split("_")[1])
                    self._finish(match[1], *self.batch_outcomes.get(number, ("completed", 1.0)))
            return 200, self._batch(match[1])
        if path.split("?")[0] == "/v1/batches":
            listed = [json.loads(self._batch(batch_id)) for batch_id in reversed(self.batches)]
            return 200, json.dumps({"object": "list", "data": listed, "has_more": False}).encode()
        return 404, json.dumps({"error": {"message": f"no route {path}"}}).encode()

    def _finish(self, batch_id: str, status: str, answered: float) -> None:
        """Answer the first `answered` fraction of the lines with the script, then end as `status`."""
        batch = self.batches[batch_id]
        lines = self.batch_lines[batch_id]
        output, errors = [], []
        for line in lines[: round(len(lines) * answered)]:
            self.requests.append(line["body"])
            reply = self.script(line["body"], len(self.requests))
            if isinstance(reply, str):
                reply = Reply(text=reply)
            if reply.status != 200:
                errors.append({"id": f"req-{len(self.requests)}", "custom_id": line["custom_id"], "error": None,
                               "response": {"status_code": reply.status,
                                            "body": {"error": {"message": reply.error or f"scripted {reply.status}"}}}})
                continue
            body = line["body"]
            usage = reply.usage or {
                "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
                "completion_tokens": len(reply.text.split()),
            }
            answer = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "model": body["model"],
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                                   "finish_reason": reply.finish_reason}],
                      "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}
            output.append({"id": f"req-{len(self.requests)}", "custom_id": line["custom_id"], "error": None,
                           "response": {"status_code": 200, "body": answer}})
        for name, found in (("output_file_id", output), ("error_file_id", errors)):
            if found:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = "".join(json.dumps(item) + "\n" for item in found).encode()
                batch[name] = file_id
        batch["status"] = status
        batch["request_counts"] = {"total": len(lines), "completed": len(output), "failed": len(errors)}
        if status == "failed":
            batch["errors"] = {"object": "list", "data": [{"code": "scripted", "message": "scripted failure"}]}

    # --- Anthropic's Message Batches (called with self.lock held) ------------------------------------------

    def message_batch_post(self, path: str, raw: bytes) -> tuple[int, bytes]:
        if path == "/v1/messages/batches":
            requests = json.loads(raw)["requests"]
            batch_id = f"msgbatch_{len(self.message_batches) + 1}"
            self.message_batch_lines[batch_id] = requests
            self.batch_submitted.update(request["custom_id"] for request in requests)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.message_batches[batch_id] = {
                "id": batch_id, "type": "message_batch", "processing_status": "in_progress",
                "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                   "expired": 0},
                "created_at": now, "expires_at": now, "ended_at": None, "archived_at": None,
                "cancel_initiated_at": None, "results_url": None, "polls": 0,
            }
            self.batch_created.set()
            return 200, self._message_batch(batch_id)
        match = re.fullmatch(r"/v1/messages/batches/([^/]+)/cancel", path)
        if match and match[1] in self.message_batches:
            batch = self.message_batches[match[1]]
            if batch["processing_status"] != "ended":
                self._finish_messages(match[1], "canceled", 0.0)
                batch["processing_status"] = "canceling"  # as Anthropic answers; `ended` from the next retrieve
            return 200, self._message_batch(match[1])
        return 404, json.dumps({"type": "error", "error": {"type": "not_found_error",
                                                           "message": f"no route {path}"}}).encode()

    def message_batch_get(self, path: str) -> tuple[int, bytes]:
        match = re.fullmatch(r"/v1/messages/batches/([^/?]+)/results", path)
        if match and match[1] in self.message_results:
            return 200, self.message_results[match[1]]
        match = re.fullmatch(r"/v1/messages/batches/([^/?]+)", path)
        if match and match[1] in self.message_batches:
            batch = self.message_batches[match[1]]
            batch["polls"] += 1
            if batch["processing_status"] == "canceling":
                batch["processing_status"] = "ended"
            elif batch["processing_status"] != "ended" and not self.batch_hold and batch["polls"] >= self.batch_polls:
                number = int(match[1].split("_")[1])
                self._finish_messages(match[1], *self.batch_outcomes.get(number, ("completed", 1.0)))
            return 200, self._message_batch(match[1])
        if path.split("?")[0] == "/v1/messages/batches":
            listed = [json.loads(self._message_batch(batch_id)) for batch_id in reversed(self.message_batches)]
            return 200, json.dumps({"data": listed, "has_more": False,
                                    "first_id": listed[0]["id"] if listed else None,
                                    "last_id": listed[-1]["id"] if listed else None}).encode()
        return 404, json.dumps({"type": "error", "error": {"type": "not_found_error",
                                                           "message": f"no route {path}"}}).encode()

    def _finish_messages(self, batch_id: str, status: str, answered: float) -> None:
        """Answer the first `answered` fraction of the requests with the script; the rest get the result
        `status` (`expired`, `canceled`) and the batch ends."""
        batch = self.message_batches[batch_id]
        requests = self.message_batch_lines[batch_id]
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines = []
        for index, request in enumerate(requests):
            if index >= round(len(requests) * answered):
                counts["expired" if status == "expired" else "canceled"] += 1
                lines.append({"custom_id": request["custom_id"],
                              "result": {"type": "expired" if status == "expired" else "canceled"}})
                continue
            params = request["params"]
            self.requests.append(params)
            reply = self.script(params, len(self.requests))
            if isinstance(reply, str):
                reply = Reply(text=reply)
            if reply.status != 200:
                counts["errored"] += 1
                error = {"type": "invalid_request_error", "message": reply.error or f"scripted {reply.status}"}
                lines.append({"custom_id": request["custom_id"],
                              "result": {"type": "errored", "error": {"type": "error", "error": error}}})
                continue
            counts["succeeded"] += 1
            words = len(str(params.get("system", "")).split()) + \
                sum(len(str(m.get("content", "")).split()) for m in params["messages"])
            usage = reply.usage or {"prompt_tokens": words, "completion_tokens": len(reply.text.split())}
            message = {"id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant",
                       "model": params["model"], "content": [{"type": "text", "text": reply.text}],
                       "stop_reason": "max_tokens" if reply.finish_reason == "length" else "end_turn",
                       "stop_sequence": None,
                       "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}}
            lines.append({"custom_id": request["custom_id"], "result": {"type": "succeeded", "message": message}})
        self.message_results[batch_id] = "".join(json.dumps(line) + "\n" for line in lines).encode()
        batch.update(processing_status="ended", request_counts=counts,
                     ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     results_url=f"{self.base_url.removesuffix('/v1')}/v1/messages/batches/{batch_id}/results")

    def _message_batch(self, batch_id: str) -> bytes:
        return json.dumps({k: v for k, v in self.message_batches[batch_id].items() if k != "polls"}).encode()

    def _batch(self, batch_id: str) -> bytes:
        return json.dumps({k: v for k, v in self.batches[batch_id].items() if k != "polls"}).encode()

    def _file(self, file_id: str, purpose: str) -> dict[str, Any]:
        return {"id": file_id, "object": "file", "bytes": len(self.files[file_id]), "created_at": int(time.time()),
                "filename": "batch.jsonl", "purpose": purpose, "status": "processed"}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """Serve echo answers with a fixed latency until killed; the first line printed is the base URL."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible endpoint on 127.0.0.1.")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    with FakeOpenAI(latency=args.latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
