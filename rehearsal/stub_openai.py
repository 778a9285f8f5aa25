"""A stub OpenAI-compatible `/v1/chat/completions` server on 127.0.0.1, for tests (no network beyond loopback).

    with StubServer(handler=lambda body: "Rating: 4") as srv:    # handler(request JSON) -> assistant text
        srv.fail_next("429", "500")                             # the next two requests fail, in that order
        srv.failure_fn = lambda i, body: "hang" if i == 7 else None   # or decide per request (i = 0, 1, ...)
        os.environ["OPENAI_BASE_URL"] = srv.url                  # "http://127.0.0.1:PORT/v1"
        ...
        srv.requests          # list of Request(index, path, headers, body, action), in arrival order

Failure actions (a queued action wins over failure_fn; None or "ok" = answer normally):
    "429"          429 with `Retry-After: <srv.retry_after>` (default "0")
    "500", "503"   that status with a small JSON error body (any 4xx/5xx number as a string works)
    "hang"         sleep `srv.hang_s` seconds (default 5) before answering: past a short client timeout
    "truncated"    200 whose Content-Length promises more bytes than are sent, then the connection closes
    "nonjson"      200 with an HTML body
    "noshape"      200 with JSON that has no `choices`
    "text:<s>"     200, well-formed, but the assistant text is <s> (e.g. to fail a client-side validator)
The handler may also raise; the server then answers 500 with the exception text.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    index: int
    path: str
    headers: dict
    body: dict | None
    action: str = "ok"


def completion_json(text: str, model: str = "stub-model") -> dict:
    """A minimal but complete chat.completion object."""
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def echo_handler(body: dict) -> str:
    """Default handler: answer with the last user message's text."""
    content = body["messages"][-1]["content"]
    if isinstance(content, list):  # multimodal message: keep the text parts
        content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return f"echo: {content}"


def rehearsal_handler(body: dict) -> str:
    """The rehearsal's chat model: Object HalBench's extraction request (one system message holding the answer, as
    RLAIF-V sends it) gets a JSON list of objects; anything else (MMHal-Bench's judge, a user message) a rating."""
    messages = body["messages"]
    if len(messages) == 1 and messages[0]["role"] == "system":
        return '["cat", "couch"]'
    return "The response matches the image contents.\nRating: 4"


class StubServer:
    def __init__(self, handler=echo_handler, failure_fn=None, retry_after: str = "0", hang_s: float = 5.0):
        self.handler = handler
        self.failure_fn = failure_fn
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.requests: list[Request] = []
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = None
        self._thread = None

    # ------------------------------------------------------------------ control
    def fail_next(self, *actions: str):
        with self._lock:
            self._queue.extend(actions)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                stub._serve(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a hanging handler must not block shutdown
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()  # wakes any "hang"
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ serving
    def _next_action(self, index: int, body) -> str:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
        if self.failure_fn is not None:
            return self.failure_fn(index, body) or "ok"
        return "ok"

    def _serve(self, h: BaseHTTPRequestHandler):
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            index = len(self.requests)
            req = Request(index, h.path, dict(h.headers), body)
            self.requests.append(req)
        action = self._next_action(index, body) if body is not None else "400"
        req.action = action
        if not h.path.endswith("/chat/completions"):
            return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
        if action == "hang":
            if self._stop.wait(self.hang_s):
                return
            action = "ok"
        if action == "ok" or action.startswith("text:"):
            try:
                text = action[5:] if action.startswith("text:") else self.handler(body)
            except Exception as e:  # noqa: BLE001 - surfaced to the client as a 500
                return self._send(h, 500, {"error": {"message": f"handler error: {e}"}})
            return self._send(h, 200, completion_json(text, body.get("model", "stub-model")))
        if action == "429":
            return self._send(h, 429, {"error": {"message": "rate limited"}}, {"Retry-After": self.retry_after})
        if action == "truncated":
            data = json.dumps(completion_json("cut")).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data) + 50))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if action == "nonjson":
            return self._send(h, 200, b"<html>502 Bad Gateway</html>", content_type="text/html")
        if action == "noshape":
            return self._send(h, 200, {"object": "chat.completion", "result": "nothing here"})
        if action.isdigit():
            return self._send(h, int(action), {"error": {"message": f"stub error {action}"}})
        raise ValueError(f"stub: unknown failure action {action!r}")

    @staticmethod
    def _send(h, status: int, payload, headers: dict | None = None, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout); nothing to do
            pass
