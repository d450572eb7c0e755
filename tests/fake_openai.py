"""A scripted OpenAI-compatible Chat Completions server on 127.0.0.1 for tests and benchmarks.

It runs in a thread of the test process and speaks real HTTP/1.1, so the official SDK, its connection
pool and distillery's retry logic are exercised exactly as against a real endpoint. Faults are injected
by request number or by a script: 429 with Retry-After, 500, slow answers, answers that trickle in a byte
at a time, malformed JSON, dropped connections, connections reset in the middle of the body, error bodies
that echo the request's Authorization header, and answers without `usage`. Every request and every
successful answer is recorded for assertions.

Run as a script it serves on its own (`python tests/fake_openai.py --latency 0.5` prints the base URL),
so a benchmark can measure a client's CPU time without the server's.
"""

from __future__ import annotations

import json
import socket
import struct
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
