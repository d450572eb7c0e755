"""A scripted OpenAI-compatible Chat Completions server on 127.0.0.1 for tests and benchmarks.

It runs in a thread of the test process and speaks real HTTP/1.1, so the official SDK, its connection
pool and distillery's retry logic are exercised exactly as against a real endpoint. Faults are injected
by request number or by a script: 429 with Retry-After, 500, slow answers, malformed JSON and dropped
connections. Every request and every successful answer is recorded for assertions.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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


Script = Callable[[dict[str, Any], int], "Reply | str"]


def echo_script(body: dict[str, Any], number: int) -> Reply:
    """Answers with a deterministic function of the last user message, so outputs can be checked."""
    return Reply(text="ANSWER: " + body["messages"][-1]["content"])


def user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


class FakeOpenAI:
    def __init__(self, script: Script = echo_script, latency: float = 0.0):
        self.script = script
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.answered: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
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
                payload = {
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
                    "usage": usage,
                }
                self._send(200, json.dumps(payload).encode(), reply.headers)
                with server.lock:
                    server.answered[user_text(body)] += 1

            def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
