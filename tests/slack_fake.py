"""A local HTTP server that stands in for Slack, for tests that use the real slack-sdk clients.

It answers incoming-webhook posts on any path with ``ok`` and ``POST /api/chat.postMessage``
with ``{"ok": true, "channel": ..., "ts": ...}``, records every request, and can be scripted
to answer the next requests otherwise (429 with ``Retry-After``, 500, a reply slower than the
client's timeout...). It runs in its own thread so that it keeps answering while a test
blocks, and it binds a free port on 127.0.0.1.

Use the ``slack_fake`` fixture, or ``with SlackFake() as fake:``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest

_WEBHOOK_ERRORS = {429: "rate_limited", 404: "no_service", 403: "action_prohibited"}
_API_ERRORS = {429: "ratelimited"}


@dataclass(frozen=True)
class Reply:
    """How to answer one request.

    ``body`` ``None`` means what Slack would say for that path and status; a dict is sent
    as JSON, a string as text. ``delay`` seconds pass before the answer (cut short when
    the fake stops), to outlast a client's timeout.
    """

    status: int = 200
    body: str | dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    reply: Reply
    at: float
    """``time.monotonic()`` when the request arrived."""

    def header(self, name: str) -> str | None:
        """A request header, looked up without regard to case."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def is_api(self) -> bool:
        """Whether this was a Web API call (``/api/...``) rather than a webhook post."""
        return self.path.startswith("/api/")


class SlackFake:
    """Fake Slack on ``http://127.0.0.1:<free port>``; see the module docstring.

    ``token``, when given, is the only bot token the Web API accepts (others get
    ``invalid_auth``, as from Slack).
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._requests: list[Recorded] = []
        self._stopping = threading.Event()
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> SlackFake:
        """Bind a free port and serve in a background thread."""
        handler = _handler_for(self)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # A reply held by ``delay`` must not keep the test run alive.
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        # A short poll interval makes stop() quick: shutdown() waits for the next poll.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), name="slack-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release delayed replies, stop serving and close the port."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> SlackFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        """The port the fake listens on."""
        if self._server is None:
            raise RuntimeError("SlackFake is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        """A webhook URL shaped like Slack's, secret part included."""
        return f"{self.url}/services/T0FAKE/B0FAKE/s3cr3tW3bh00kP4th"

    @property
    def api_url(self) -> str:
        """Web API base URL to pass as ``SLACK_API_URL`` (``.../api/``)."""
        return f"{self.url}/api/"

    # scripting and inspection

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order; then ``ok`` again."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def delivered(self) -> list[Recorded]:
        """Requests that were answered as a successful post (2xx, and ``ok`` for the API)."""
        return [r for r in self.requests if self._succeeded(r)]

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        """Poll until at least ``n`` requests are recorded; return them.

        Async so that the client under test keeps running on the same loop meanwhile.
        Raises ``TimeoutError`` naming what did arrive.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.requests
            if len(got) >= n:
                return got
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"SlackFake got {len(got)} request(s), wanted {n} within {timeout}s: "
                    f"{[(r.path, r.reply.status) for r in got]}"
                )
            await asyncio.sleep(0.005)

    def _succeeded(self, r: Recorded) -> bool:
        if not 200 <= r.reply.status < 300:
            return False
        if not r.is_api:
            return True
        if isinstance(r.reply.body, dict):
            return bool(r.reply.body.get("ok"))
        return self.token is None or r.header("Authorization") == f"Bearer {self.token}"

    # serving (called from the server's threads)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._replies.popleft() if self._replies else Reply()

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)

    def _answer(self, path: str, auth: str | None, payload: Any, reply: Reply) -> bytes:
        if reply.body is not None:
            if isinstance(reply.body, str):
                return reply.body.encode()
            return json.dumps(reply.body).encode()
        if not path.startswith("/api/"):
            if 200 <= reply.status < 300:
                return b"ok"
            default = "internal_error" if reply.status >= 500 else "invalid_payload"
            return _WEBHOOK_ERRORS.get(reply.status, default).encode()
        if 200 <= reply.status < 300:
            if self.token is not None and auth != f"Bearer {self.token}":
                return json.dumps({"ok": False, "error": "invalid_auth"}).encode()
            channel = payload.get("channel") if isinstance(payload, dict) else None
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            return json.dumps({"ok": True, "channel": channel, "ts": ts}).encode()
        default = "internal_error" if reply.status >= 500 else "invalid_arguments"
        return json.dumps({"ok": False, "error": _API_ERRORS.get(reply.status, default)}).encode()


def _decode(body: bytes, content_type: str) -> Any:
    if not body:
        return None
    if "json" in content_type:
        try:
            return json.loads(body)
        except ValueError:
            return None
    if "x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(body.decode()))
    return None


def _handler_for(fake: SlackFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            payload = _decode(body, self.headers.get("Content-Type", ""))
            reply = fake._next_reply()
            fake._record(
                Recorded(
                    method=self.command,
                    path=self.path,
                    headers=dict(self.headers.items()),
                    body=body,
                    json=payload,
                    reply=reply,
                    at=time.monotonic(),
                )
            )
            if reply.delay:
                fake._stopping.wait(reply.delay)
            out = fake._answer(self.path, self.headers.get("Authorization"), payload, reply)
            is_json = self.path.startswith("/api/") or isinstance(reply.body, dict)
            try:
                self.send_response(reply.status)
                ctype = "application/json; charset=utf-8" if is_json else "text/plain"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(out)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): what a slow Slack looks like

        do_POST = _serve
        do_GET = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; the fake records requests instead

    return Handler


@pytest.fixture
def slack_fake() -> Iterator[SlackFake]:
    """A started :class:`SlackFake`, stopped after the test."""
    with SlackFake() as fake:
        yield fake
