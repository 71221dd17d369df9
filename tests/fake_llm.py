"""A local HTTP server that answers in the OpenAI and Anthropic APIs' shapes, for tests that
drive the real ``openai`` and ``anthropic`` client libraries.

``POST .../chat/completions``, ``.../responses`` and ``.../embeddings`` answer as OpenAI
(``base_url=fake.openai_url``) and ``POST .../messages`` as Anthropic (``base_url=fake.url``),
each as JSON or, when the request says ``stream: true``, as server-sent events over chunked
HTTP/1.1: one delta per word of the reply text, the final usage chunk when
``stream_options.include_usage`` asks for it, ``message_start`` / ``message_delta`` usage
for Anthropic, ``response.completed`` usage for the Responses API. The next replies can be scripted:
a 500, or a stream whose connection drops after some deltas (no terminating chunk, so the
client sees a broken body, as from a real cut). Every request is recorded.

Also here: :class:`StandInGuard`, a stand-in for the guard port (``admit`` / ``record``
with the signatures of ``spendstream.producers.guard.Guard``) that keeps what it was
asked, for tests of the wrappers that do not need Redis.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from spendstream.contract.event import UsageEvent
from spendstream.producers.guard import Admission
from spendstream.producers.tokens import count_messages

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun."


@dataclass(frozen=True)
class Reply:
    """How to answer one request.

    Token counts are in each API's own terms: ``input_tokens`` is OpenAI's
    ``prompt_tokens`` (cache reads included) and Anthropic's ``input_tokens`` (cache reads
    excluded); ``cached_tokens`` is ``prompt_tokens_details.cached_tokens`` or
    ``cache_read_input_tokens``. ``drop_after`` cuts a stream after that many deltas.
    """

    status: int = 200
    text: str = TEXT
    input_tokens: int = 21
    output_tokens: int = 17
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    """Anthropic's ``cache_creation_input_tokens``."""
    finish_reason: str = "stop"
    stop_reason: str = "end_turn"
    drop_after: int | None = None
    usage_chunk: bool = True
    """OpenAI streams: send the usage chunk when asked (some compatible servers do not)."""


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    path: str
    headers: dict[str, str]
    json: Any
    reply: Reply


def words(text: str) -> list[str]:
    """The deltas a reply streams: each word with its trailing space."""
    return re.findall(r"\S+\s*", text)


class FakeLLM:
    """Fake OpenAI and Anthropic APIs on ``http://127.0.0.1:<free port>``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeLLM:
        """Bind a free port and serve in a background thread."""
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,),
                                        name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL (Anthropic's ``base_url``)."""
        if self._server is None:
            raise RuntimeError("FakeLLM is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def openai_url(self) -> str:
        """OpenAI's ``base_url`` (``.../v1``)."""
        return f"{self.url}/v1"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order; then the default again."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def _take(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        with self._lock:
            reply = self._replies.popleft() if self._replies else Reply()
            self._requests.append(Recorded(path, headers, body, reply))
            return reply

    def next_id(self) -> str:
        """A fresh response id."""
        return f"fake-{next(self._ids)}"


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a stream left early) resets the connection: expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _openai_usage(r: Reply) -> dict[str, Any]:
    return {"prompt_tokens": r.input_tokens, "completion_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def _openai_json(rid: str, model: str, r: Reply) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                         "finish_reason": r.finish_reason, "logprobs": None}],
            "usage": _openai_usage(r)}


def _openai_events(rid: str, model: str, r: Reply, body: dict[str, Any]) -> Iterator[bytes]:
    """SSE frames of a streamed chat completion; ``None`` marks where a delta is counted."""
    usage_asked = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    extra = {"usage": None} if usage_asked else {}

    def frame(choices: list[dict[str, Any]], **more: Any) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra, **more}).encode() \
            + b"\n\n"

    yield frame([{"index": 0, "delta": {"role": "assistant", "content": ""},
                  "finish_reason": None}])
    for word in words(r.text):
        yield frame([{"index": 0, "delta": {"content": word}, "finish_reason": None}])
    yield frame([{"index": 0, "delta": {}, "finish_reason": r.finish_reason}])
    if usage_asked and r.usage_chunk:
        yield frame([], usage=_openai_usage(r))
    yield b"data: [DONE]\n\n"


def _anthropic_usage(r: Reply) -> dict[str, Any]:
    return {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
            "cache_read_input_tokens": r.cached_tokens,
            "cache_creation_input_tokens": r.cache_write_tokens}


def _anthropic_json(rid: str, model: str, r: Reply) -> dict[str, Any]:
    return {"id": rid, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": r.text}], "stop_reason": r.stop_reason,
            "stop_sequence": None, "usage": _anthropic_usage(r)}


def _anthropic_events(rid: str, model: str, r: Reply) -> Iterator[bytes]:
    def frame(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    start_usage = {**_anthropic_usage(r), "output_tokens": 1}
    yield frame("message_start", {"message": {
        "id": rid, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
    yield frame("content_block_start", {"index": 0,
                                        "content_block": {"type": "text", "text": ""}})
    yield frame("ping", {})
    for word in words(r.text):
        yield frame("content_block_delta", {"index": 0,
                                            "delta": {"type": "text_delta", "text": word}})
    yield frame("content_block_stop", {"index": 0})
    yield frame("message_delta", {"delta": {"stop_reason": r.stop_reason,
                                            "stop_sequence": None},
                                  "usage": {"output_tokens": r.output_tokens}})
    yield frame("message_stop", {})


def _response_json(rid: str, model: str, r: Reply, status: str = "completed"
                   ) -> dict[str, Any]:
    done = status == "completed"
    content = [{"type": "output_text", "text": r.text, "annotations": []}] if done else []
    return {"id": rid, "object": "response", "created_at": int(time.time()), "model": model,
            "status": status, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "output": [{"type": "message", "id": "msg_" + rid, "status": status,
                        "role": "assistant", "content": content}] if done else [],
            "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                      "total_tokens": r.input_tokens + r.output_tokens,
                      "input_tokens_details": {"cached_tokens": r.cached_tokens},
                      "output_tokens_details": {"reasoning_tokens": 0}} if done else None}


def _response_events(rid: str, model: str, r: Reply) -> Iterator[bytes]:
    seq = itertools.count()

    def frame(kind: str, data: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": next(seq), **data}
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

    item_id = "msg_" + rid
    yield frame("response.created", {"response": _response_json(rid, model, r, "in_progress")})
    yield frame("response.output_item.added", {"output_index": 0, "item": {
        "type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
        "content": []}})
    yield frame("response.content_part.added", {
        "item_id": item_id, "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []}})
    for word in words(r.text):
        yield frame("response.output_text.delta", {"item_id": item_id, "output_index": 0,
                                                   "content_index": 0, "delta": word,
                                                   "logprobs": []})
    yield frame("response.output_text.done", {"item_id": item_id, "output_index": 0,
                                              "content_index": 0, "text": r.text,
                                              "logprobs": []})
    final = _response_json(rid, model, r)
    yield frame("response.output_item.done", {"output_index": 0, "item": final["output"][0]})
    yield frame("response.completed", {"response": final})


def _embeddings_json(model: str, r: Reply, body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    n = 1 if isinstance(inputs, str) else len(inputs or [])
    vector = [0.25, -0.5, 1.0]
    encoded: Any = vector
    if body.get("encoding_format") == "base64":
        encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded}
                     for i in range(n)],
            "usage": {"prompt_tokens": r.input_tokens, "total_tokens": r.input_tokens}}


def _is_delta(frame: bytes) -> bool:
    return b'"content": "' in frame and b'"content": ""' not in frame \
        or b"content_block_delta" in frame or b"output_text.delta" in frame


def _handler_for(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.rstrip("/")
            is_openai = path.endswith("/chat/completions")
            kind = ("responses" if path.endswith("/responses") else
                    "embeddings" if path.endswith("/embeddings") else None)
            if kind is not None:
                self._openai_other(kind, body)
                return
            if not is_openai and not path.endswith("/messages"):
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            reply = fake._take(self.path, dict(self.headers.items()), body)
            if reply.status >= 400:
                error = ({"error": {"message": "fake failure", "type": "server_error"}}
                         if is_openai else
                         {"type": "error", "error": {"type": "api_error",
                                                     "message": "fake failure"}})
                self._json(reply.status, error)
                return
            rid, model = fake.next_id(), str(body.get("model", "unknown"))
            if not body.get("stream"):
                self._json(200, _openai_json(rid, model, reply) if is_openai
                           else _anthropic_json(rid, model, reply))
                return
            frames = (_openai_events(rid, model, reply, body) if is_openai
                      else _anthropic_events(rid, model, reply))
            self._stream(frames, reply.drop_after)

        def _openai_other(self, kind: str, body: dict[str, Any]) -> None:
            reply = fake._take(self.path, dict(self.headers.items()), body)
            if reply.status >= 400:
                self._json(reply.status, {"error": {"message": "fake failure",
                                                    "type": "server_error"}})
                return
            rid, model = fake.next_id(), str(body.get("model", "unknown"))
            if kind == "embeddings":
                self._json(200, _embeddings_json(model, reply, body))
            elif body.get("stream"):
                self._stream(_response_events(rid, model, reply), reply.drop_after)
            else:
                self._json(200, _response_json(rid, model, reply))

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def _stream(self, frames: Iterator[bytes], drop_after: int | None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deltas = 0
            try:
                for frame in frames:
                    if drop_after is not None and _is_delta(frame):
                        if deltas >= drop_after:
                            self._drop()
                            return
                        deltas += 1
                    self.wfile.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading: fine

        def _drop(self) -> None:
            """Cut the connection mid-body, as a failing network or provider would."""
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A started :class:`FakeLLM`, stopped after the test."""
    with FakeLLM() as fake:
        yield fake


class StandInGuard:
    """A stand-in for the guard port: admits every call (model and cap from its arguments,
    ``max_tokens`` never above ``cap``), counts the prompt locally, and keeps each
    admission and recorded event. Not a mock of Redis or Kafka: it replaces the guard."""

    def __init__(self, model: str = "gpt-4o-mini", cap: int = 64) -> None:
        self.model = model
        self.cap = cap
        self.admissions: list[Admission] = []
        self.events: list[UsageEvent] = []

    def admit(self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
              model: str | None = None, max_tokens: int | None = None,
              tier: str | None = None, reserve: bool = True) -> Admission:
        """Admit the call as it is, with ``max_tokens`` at most ``cap``."""
        chosen = model or self.model
        count = count_messages(messages, chosen)
        admission = Admission(user_id=user_id, feature=feature, model=chosen,
                              max_tokens=min(max_tokens or self.cap, self.cap),
                              messages=list(messages), input_tokens_local=count.tokens,
                              input_exact=count.exact)
        self.admissions.append(admission)
        return admission

    def reserve(self, admission: Admission) -> Admission:
        """Nothing to hold: the stand-in has no budgets."""
        return admission

    def record(self, admission: Admission, *, provider: str | None, input_tokens: int,
               output_tokens: int, cached_input_tokens: int = 0, status: str = "ok",
               finish_reason: str | None = None, estimated: bool = False,
               model: str | None = None, cache_write_input_tokens: int = 0) -> UsageEvent:
        """Keep the event the real guard would emit."""
        event = UsageEvent(user_id=admission.user_id, feature=admission.feature,
                           model=model or admission.model, provider=provider,
                           input_tokens=input_tokens, output_tokens=output_tokens,
                           cached_input_tokens=cached_input_tokens,
                           cache_write_input_tokens=cache_write_input_tokens, status=status,
                           finish_reason=finish_reason, estimated=estimated,
                           local_input_tokens=admission.input_tokens_local)
        self.events.append(event)
        return event

    async def wait_for_events(self, n: int, timeout: float = 5.0) -> list[UsageEvent]:
        """Let the event loop run (asyncio finalizes abandoned async generators on later
        turns) until ``n`` events are recorded."""
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.events)} event(s) recorded, wanted {n}")
            await asyncio.sleep(0.01)
        return list(self.events)


class AsyncStandInGuard(StandInGuard):
    """:class:`StandInGuard` with an awaited ``admit``, like ``AsyncGuard``."""

    async def admit(  # type: ignore[override]
            self, user_id: str, feature: str, messages: list[dict[str, Any]], *,
            model: str | None = None, max_tokens: int | None = None,
            tier: str | None = None, reserve: bool = True) -> Admission:
        """See :meth:`StandInGuard.admit`."""
        return super().admit(user_id, feature, messages, model=model, max_tokens=max_tokens,
                             tier=tier)

    async def reserve(self, admission: Admission) -> Admission:  # type: ignore[override]
        """See :meth:`StandInGuard.reserve`."""
        return admission
