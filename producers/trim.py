"""The input budget: fit a chat into ``max_input_tokens`` by the feature's policy.

* ``reject``: refuse a prompt over the budget (:class:`InputTooLong`).
* ``truncate``: keep every message, cut the end off the last message's text.
* ``trim_history``: keep the system messages and the most recent turns that fit; the
  last message is always kept (else the prompt is refused).

Counts come from :func:`spendstream.producers.tokens.count_messages` (chat overhead
included), whose total is additive: 3 priming tokens plus each message's own cost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from spendstream.errors import InputTooLong
from spendstream.producers.tokens import TOKENS_REPLY_PRIMING, TokenCount, count_messages

Policy = Literal["reject", "truncate", "trim_history"]
Counter = Callable[[Sequence[Mapping[str, Any]], str], TokenCount]
SYSTEM_ROLES = frozenset({"system", "developer"})


class Fitted(NamedTuple):
    """The messages to send, their token count, and whether anything was cut (a tuple: one
    is made per guarded call)."""

    messages: list[dict[str, Any]]
    tokens: int
    exact: bool
    trimmed: bool


def fit(messages: Sequence[Mapping[str, Any]], model: str, limit: int | None,
        policy: Policy = "trim_history", counter: Counter = count_messages) -> Fitted:
    """Apply ``policy`` so the prompt counts at most ``limit`` tokens (``None``: no limit)."""
    # Plain dicts pass through uncopied (this runs before every call); the policies below
    # build new lists and dicts rather than editing the caller's.
    msgs = [m if type(m) is dict else dict(m) for m in messages]
    total = counter(msgs, model)
    if limit is None or total.tokens <= limit:
        return Fitted(msgs, total.tokens, total.exact, False)
    if policy == "truncate":
        return _truncate(msgs, model, limit, total, counter)
    if policy == "trim_history":
        return _trim_history(msgs, model, limit, total, counter)
    raise InputTooLong(f"the prompt has {total.tokens} tokens, over this feature's "
                       f"max_input_tokens of {limit}: shorten it", tokens=total.tokens,
                       limit=limit)


def _too_long(total: int, limit: int, what: str) -> InputTooLong:
    return InputTooLong(f"the prompt has {total} tokens, over this feature's max_input_tokens "
                        f"of {limit}, and {what}", tokens=total, limit=limit)


def _trim_history(msgs: list[dict[str, Any]], model: str, limit: int, total: TokenCount,
                  counter: Counter) -> Fitted:
    def cost(m: dict[str, Any]) -> int:
        return counter([m], model).tokens - TOKENS_REPLY_PRIMING

    system = [i for i, m in enumerate(msgs) if m.get("role") in SYSTEM_ROLES]
    used = TOKENS_REPLY_PRIMING + sum(cost(msgs[i]) for i in system)
    keep = set(system)
    last = len(msgs) - 1
    for i in range(last, -1, -1):
        if i in keep:
            continue
        c = cost(msgs[i])
        if used + c > limit:
            if i == last:
                raise _too_long(total.tokens, limit, "the system prompt and the last message "
                                "alone do not fit: shorten the last message")
            break
        used += c
        keep.add(i)
    kept = [m for i, m in enumerate(msgs) if i in keep]
    # A tool result whose assistant tool call was dropped is an orphan the APIs reject.
    while True:
        first = next((j for j, m in enumerate(kept) if m.get("role") not in SYSTEM_ROLES), None)
        if first is None or first == len(kept) - 1 or kept[first].get("role") != "tool":
            break
        del kept[first]
    final = counter(kept, model)
    return Fitted(kept, final.tokens, final.exact, True)


def _truncate(msgs: list[dict[str, Any]], model: str, limit: int, total: TokenCount,
              counter: Counter) -> Fitted:
    text = msgs[-1].get("content") if msgs else None
    if not isinstance(text, str):
        raise _too_long(total.tokens, limit, "its last message has no text to truncate")

    def with_prefix(n: int) -> list[dict[str, Any]]:
        return [*msgs[:-1], {**msgs[-1], "content": text[:n]}]

    if counter(with_prefix(0), model).tokens > limit:
        raise _too_long(total.tokens, limit, "the messages before the last alone do not fit")
    lo, hi = 0, len(text)  # the longest prefix that fits lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if counter(with_prefix(mid), model).tokens <= limit:
            lo = mid
        else:
            hi = mid
    kept = with_prefix(lo)
    final = counter(kept, model)
    return Fitted(kept, final.tokens, final.exact, True)
