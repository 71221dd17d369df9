"""The worker's internal rollup topic: stage one's partial sums of the stage-two windows.

Stage one (partitioned by user) forwards, after each batch, the partial sums its source
partition reached for every feature, global, audit and unpriced window the batch
touched. A message's key is the feature, or :data:`GLOBAL` for every other window; its
value is::

    {"p": <source partition>, "v": <version: the source state's offset>,
     "parts": {<window key>: <sums>, ...}}

A window key is ``kind|id|period|window`` (``kind`` one of ``f`` feature, ``g`` global,
``drift`` token audit, ``unp`` unpriced model); its ``late|`` twin holds the window's
events beyond the grace period. Only the id may contain ``|``. Sums are
:meth:`spendstream.domain.totals.Totals.sums`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from spendstream.domain.windows import Period, Window, window_from_key

GLOBAL: Final = "*"
"""The message key of every window that is not a feature's, and the global windows' id."""
LATE: Final = "late|"
"""Prefix of the twin of a window that holds its events beyond the grace period."""


def window_key(kind: str, subject: str, period: str, window: str) -> str:
    """A stage-two window key: ``kind|subject|period|window``."""
    return f"{kind}|{subject}|{period}|{window}"


def split_key(key: str, n: int) -> list[str]:
    """Split ``kind|id|...`` into ``n`` parts; only the id may contain ``|``."""
    kind, rest = key.split("|", 1)
    return [kind, *rest.rsplit("|", n - 2)]


def window_parts(key: str) -> list[str]:
    """``kind, id, period, window key`` of a stage-two key (``late|`` twins included)."""
    return split_key(key.removeprefix(LATE), 4)


def window_of_key(key: str) -> Window:
    """The window a stage-two key (or its ``late|`` twin) names."""
    _, _, period, wkey = window_parts(key)
    return window_from_key(_period(period), wkey)


def message_key(key: str) -> str:
    """The rollup topic's message key for a stage-two window: its feature, or ``*``."""
    kind, subject, _, _ = window_parts(key)
    return subject if kind == "f" else GLOBAL


def _period(text: str) -> Period:
    if text not in ("minute", "hour", "day", "month"):
        raise ValueError(f"unknown window period {text!r}")
    return text  # type: ignore[return-value]


class MalformedRollup(ValueError):
    """A rollup message that is not what stage one writes (a stray producer)."""


@dataclass(frozen=True, slots=True)
class RollupMessage:
    """One source partition's partial sums of the windows one batch touched."""

    source: int
    """The source (usage topic) partition."""
    version: int
    """Increases with the source state: a stale message never replaces a newer one."""
    parts: dict[str, dict[str, Any]]
    """Window key to that partition's sums."""

    def encode(self) -> bytes:
        """The message value as sent."""
        return orjson.dumps({"p": self.source, "v": self.version, "parts": self.parts})

    @classmethod
    def decode(cls, raw: bytes | None) -> RollupMessage:
        """Parse a message value; :class:`MalformedRollup` says why one is not valid."""
        try:
            body = orjson.loads(raw or b"")
            source, version, parts = int(body["p"]), int(body["v"]), body["parts"]
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as e:
            raise MalformedRollup(f"malformed rollup message: {e!r}") from None
        if not isinstance(parts, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in parts.items()):
            raise MalformedRollup("malformed rollup message: parts is not an object of "
                                  "window keys to sums")
        return cls(source, version, parts)
