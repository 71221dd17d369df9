"""The input budget: reject, truncate and trim_history against the real token counter."""

from __future__ import annotations

from typing import Any

import pytest

from spendstream.errors import InputTooLong
from spendstream.producers.tokens import TOKENS_REPLY_PRIMING, count_messages
from spendstream.producers.trim import fit

MODEL = "gpt-4"  # cl100k_base, exact offline


def cost(m: dict[str, Any]) -> int:
    """What one message adds to a chat's count."""
    return count_messages([m], MODEL).tokens - TOKENS_REPLY_PRIMING


def total(ms: list[dict[str, Any]]) -> int:
    return count_messages(ms, MODEL).tokens


SYS = {"role": "system", "content": "You are a terse assistant for ACME support."}
TURNS = [
    {"role": "user", "content": "first question " * 20},
    {"role": "assistant", "content": "first answer " * 20},
    {"role": "user", "content": "second question " * 20},
    {"role": "assistant", "content": "second answer " * 20},
    {"role": "user", "content": "latest question, please answer it"},
]
CHAT = [SYS, *TURNS]


def _budget_for(kept: list[dict[str, Any]], slack: int = 0) -> int:
    return TOKENS_REPLY_PRIMING + sum(cost(m) for m in kept) + slack


# (name, messages, limit, expected kept messages)
CASES = [
    ("fits: untouched", CHAT, total(CHAT), CHAT),
    ("system + last turn", CHAT, _budget_for([SYS, TURNS[-1]], cost(TURNS[-2]) - 1),
     [SYS, TURNS[-1]]),
    ("system + last two, exact boundary", CHAT, _budget_for([SYS, *TURNS[-2:]]),
     [SYS, *TURNS[-2:]]),
    ("system + last four, one short of all", CHAT, total(CHAT) - 1, [SYS, *TURNS[1:]]),
    ("no system prompt", TURNS, _budget_for(TURNS[-3:]), TURNS[-3:]),
    ("late developer message kept",
     [SYS, TURNS[0], {"role": "developer", "content": "be brief"}, *TURNS[1:]],
     _budget_for([SYS, {"role": "developer", "content": "be brief"}, TURNS[-1]]),
     [SYS, {"role": "developer", "content": "be brief"}, TURNS[-1]]),
    ("a big old turn stops the walk: no gaps", [SYS, {"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "x " * 500},
                                                 TURNS[-1]],
     _budget_for([SYS, {"role": "user", "content": "hi"}, TURNS[-1]]), [SYS, TURNS[-1]]),
    ("orphan tool result dropped",
     [SYS, {"role": "assistant", "content": "calling " * 50, "tool_calls": "[...]"},
      {"role": "tool", "content": "42", "tool_call_id": "a"}, TURNS[-1]],
     _budget_for([SYS, {"role": "tool", "content": "42", "tool_call_id": "a"}, TURNS[-1]]),
     [SYS, TURNS[-1]]),
]


@pytest.mark.parametrize(("name", "messages", "limit", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_trim_history_keeps_system_and_latest_turns(name: str, messages: list[dict[str, Any]],
                                                    limit: int, expected: list[dict[str, Any]]
                                                    ) -> None:
    result = fit(messages, MODEL, limit, "trim_history")
    assert result.messages == expected
    assert result.tokens == total(expected) <= limit
    assert result.trimmed == (expected != messages)
    assert result.exact


def test_trim_history_refuses_when_the_last_message_cannot_fit() -> None:
    limit = _budget_for([SYS, TURNS[-1]]) - 1
    with pytest.raises(InputTooLong) as e:
        fit(CHAT, MODEL, limit, "trim_history")
    assert e.value.limit == limit and e.value.tokens == total(CHAT)
    assert "last message" in str(e.value)


def test_no_limit_and_within_limit_change_nothing() -> None:
    for limit in (None, total(CHAT), total(CHAT) + 100):
        for policy in ("reject", "truncate", "trim_history"):
            result = fit(CHAT, MODEL, limit, policy)  # type: ignore[arg-type]
            assert result.messages == CHAT and not result.trimmed
            assert result.tokens == total(CHAT)


def test_reject_refuses_over_the_limit_naming_the_numbers() -> None:
    with pytest.raises(InputTooLong) as e:
        fit(CHAT, MODEL, total(CHAT) - 1, "reject")
    assert (e.value.tokens, e.value.limit) == (total(CHAT), total(CHAT) - 1)
    assert str(total(CHAT)) in str(e.value)


@pytest.mark.parametrize("cut", [1, 7, 40, 100])
def test_truncate_cuts_the_end_of_the_last_message(cut: int) -> None:
    chat = [SYS, TURNS[0], {"role": "user", "content": "word " * 200}]
    limit = total(chat) - cut
    result = fit(chat, MODEL, limit, "truncate")
    assert result.trimmed
    assert result.messages[:-1] == chat[:-1]
    last = result.messages[-1]["content"]
    assert chat[-1]["content"].startswith(last) and len(last) < len(chat[-1]["content"])
    assert limit - 2 <= result.tokens <= limit  # as much as fits, not just anything that fits
    assert result.tokens == total(result.messages)


def test_truncate_refuses_when_the_earlier_messages_alone_are_over() -> None:
    chat = [SYS, TURNS[0], {"role": "user", "content": "short"}]
    with pytest.raises(InputTooLong):
        fit(chat, MODEL, _budget_for([SYS]) + 2, "truncate")


def test_fit_does_not_mutate_the_callers_messages() -> None:
    original = [*CHAT[:-1], {"role": "user", "content": "word " * 100}]
    chat = [dict(m) for m in original]
    assert fit(chat, MODEL, total(chat) - 30, "truncate").trimmed
    assert fit(chat, MODEL, total(chat) - 30, "trim_history").trimmed
    assert chat == original
