"""Redis key names and the flag value: the storage contract between the worker, the
guard, the CLI and apps in any language.

Names here are without the configurable prefix (``SPENDSTREAM_REDIS_PREFIX``, by default
``spendstream:``); the caller adds it. Every key holds a JSON object and expires at the
end of the window it describes:

- ``cutoff:user:{user_id}``, ``warn:user:{user_id}``: a user's daily budget;
- ``cutoff:feature:{feature}``, ``warn:feature:{feature}``: a feature's budget, or an
  operator's kill switch (``spendstream disable``);
- ``cutoff:global``: the global daily cap or the tokens-per-minute ceiling (``id``
  ``daily_cap`` or ``tpm``);
- ``spend:user:{user_id}``, ``spend:feature:{feature}``, ``spend:global:{period}``: live
  spend of the current window, refreshed in batches.

The guard's own keys (not flags): ``rate:user:...`` sorted sets of recent calls (the
per-minute limits, expiring with their minute); ``reserved:user:{user_id}`` and
``reserved:global`` hashes of the calls in flight's reserved cost, with their
``...:expiry`` sorted sets (pre-call reservations); ``cache:{feature}:{sha256}`` the
response cache's answers, expiring after the feature's ``cache.ttl``.

A cutoff or warn key's value is :func:`flag_value`'s object.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final, Literal

import orjson

DEFAULT_PREFIX: Final = "spendstream:"
"""The key prefix when ``SPENDSTREAM_REDIS_PREFIX`` is not set."""

Scope = Literal["user", "feature", "global"]

CUTOFF_GLOBAL: Final = "cutoff:global"
FLAG_PATTERNS: Final = ("cutoff:*", "warn:*")
"""``SCAN`` patterns (after the prefix) of every cutoff and warn flag."""
SPEND_PATTERN: Final = "spend:*"
"""``SCAN`` pattern (after the prefix) of every live spend key."""

FLAG_KINDS: Final = ("cutoff_user", "cutoff_feature", "cutoff_global", "warn_user",
                     "warn_feature", "spend_user")
"""The order of the keys in the guard's one MGET (see :func:`guard_keys`)."""


def cutoff_user(user_id: str) -> str:
    """The key that stops a user's calls until the end of their UTC day."""
    return f"cutoff:user:{user_id}"


def cutoff_feature(feature: str) -> str:
    """The key that stops a feature's calls (budget policy or kill switch)."""
    return f"cutoff:feature:{feature}"


def warn_user(user_id: str) -> str:
    """The key saying a user passed the warn threshold of their budget."""
    return f"warn:user:{user_id}"


def warn_feature(feature: str) -> str:
    """The key saying a feature passed the warn threshold of its budget."""
    return f"warn:feature:{feature}"


def warn(scope: Scope, subject: str) -> str:
    """The warn key of any scope: ``warn:{scope}:{subject}``."""
    return f"warn:{scope}:{subject}"


def spend_user(user_id: str) -> str:
    """A user's live spend of the current day."""
    return f"spend:user:{user_id}"


def spend_feature(feature: str) -> str:
    """A feature's live spend of its current period."""
    return f"spend:feature:{feature}"


def spend_global(period: str) -> str:
    """Global live spend of the current ``minute``, ``hour`` or ``day``."""
    return f"spend:global:{period}"


def is_spend(name: str) -> bool:
    """Whether ``name`` (unprefixed) is a live spend key rather than a flag."""
    return name.startswith("spend:")


def guard_keys(prefix: str, user_id: str, feature: str) -> list[str]:
    """The prefixed keys one admission reads, in :data:`FLAG_KINDS` order."""
    return [prefix + cutoff_user(user_id), prefix + cutoff_feature(feature),
            prefix + CUTOFF_GLOBAL, prefix + warn_user(user_id),
            prefix + warn_feature(feature), prefix + spend_user(user_id)]


def flag_value(scope: Scope, subject: str, reason: str, level: str, spent: Decimal,
               budget: Decimal, unit: str, window_start: str, window_end: str | None
               ) -> dict[str, Any]:
    """The JSON value of a cutoff or warn key.

    ``level`` is ``warn``, ``cutoff``, ``alert`` or ``escalated``; ``unit`` is ``usd``,
    ``tokens`` or ``switch`` (an operator's kill switch); times are RFC 3339 UTC
    (``...Z``); ``window_end`` is ``None`` for a switch without an expiry.
    """
    return {"scope": scope, "id": subject, "reason": reason, "level": level,
            "spent": str(spent), "budget": str(budget), "unit": unit,
            "window_start": window_start, "window_end": window_end}


def encode(value: dict[str, Any]) -> bytes:
    """A key's JSON value as stored."""
    return orjson.dumps(value)


def parse_flag(raw: bytes | str | None) -> dict[str, Any] | None:
    """A flag's JSON value, ``None`` when the key is absent. A key that exists but does
    not hold a JSON object still counts as set (someone wrote it on purpose), empty."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def rate_user(user_id: str) -> str:
    """The sorted set holding a user's recent requests (the guard's rate limit)."""
    return f"rate:user:{user_id}"


def rate_feature(user_id: str, feature: str, unit: str) -> str:
    """The sorted set of a user's recent calls of one feature (``unit`` ``requests`` or
    ``tokens``): the feature's ``limits``."""
    return f"rate:user:{user_id}:feature:{feature}:{unit}"


def rate_tier(user_id: str, unit: str) -> str:
    """The sorted set of a user's recent calls of any feature: the tier's ``limits``."""
    return f"rate:user:{user_id}:tier:{unit}"


def response_cache(feature: str, digest: str) -> str:
    """A cached answer of one feature: ``digest`` is the SHA-256 of the request."""
    return f"cache:{feature}:{digest}"


RESERVED_GLOBAL: Final = "reserved:global"
"""Hash of every call in flight's reserved cost (nano-USD) and their total (``_total``)."""
RESERVED_GLOBAL_EXPIRY: Final = "reserved:global:expiry"
"""Sorted set: when each global reservation expires (µs)."""


def reserved_user(user_id: str) -> str:
    """Hash of a user's calls in flight: reservation id → nano-USD, and ``_total``."""
    return f"reserved:user:{user_id}"


def reserved_user_expiry(user_id: str) -> str:
    """Sorted set: when each of the user's reservations expires (µs)."""
    return f"reserved:user:{user_id}:expiry"


def spend(scope: Scope, subject: str) -> str:
    """The live spend key of any scope (``subject`` is the period for ``global``)."""
    return f"spend:{scope}:{subject}"
