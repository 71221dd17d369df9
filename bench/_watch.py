"""Watching the worker from Redis: when its totals are final, and whether they are exact.

The worker is a black box; its output is the README's Redis contract: ``spend:global:day``
(and ``hour``, ``minute``), ``spend:feature:{f}``, ``spend:user:{u}`` (JSON, ``spent_usd``
a decimal string) and the ``warn:user:{u}`` / ``cutoff:user:{u}`` flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis
from _traffic import Expected, Sums

from spendstream.contract.keys import (
    SPEND_PATTERN,
    cutoff_user,
    spend_feature,
    spend_global,
    spend_user,
)

POLL = 0.05
PROGRESS_EVERY = 5.0
STALL = 180.0
"""Seconds without progress before the benchmark declares the worker stuck."""


@dataclass(frozen=True, slots=True)
class Span:
    """When the worker's first spend key appeared and when every total was final."""

    first: float
    final: float

    @property
    def seconds(self) -> float:
        """From the first spend key to the last total."""
        return self.final - self.first


def _get(r: redis.Redis, key: str) -> dict[str, Any] | None:
    raw = r.get(key)
    return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]


def global_events(r: redis.Redis, prefix: str) -> int:
    """Events in the global day window so far (0 before the first total)."""
    day = _get(r, prefix + spend_global("day"))
    return int(day["events"]) if day else 0


def any_spend(r: redis.Redis, prefix: str) -> bool:
    """True once the worker has written any ``spend:*`` key: its first batch is processed.

    Each phase has a Redis database of its own, so the first scan step covers it all.
    """
    _, keys = r.scan(0, match=prefix + SPEND_PATTERN, count=1000)
    return bool(keys)


def _features_final(r: redis.Redis, prefix: str, features: dict[str, Sums]) -> bool:
    names = list(features)
    raws = r.mget([prefix + spend_feature(f) for f in names])
    return all(raw is not None and orjson.loads(raw)["events"] == features[f].events
               for f, raw in zip(names, raws, strict=True))


def _flags_final(r: redis.Redis, prefix: str, cutoff: Iterable[str]) -> bool:
    keys = [prefix + cutoff_user(u) for u in cutoff]
    return not keys or int(r.exists(*keys)) == len(keys)


def wait_final(r: redis.Redis, prefix: str, expected: Expected, events: int,
               alive: Callable[[], None], label: str,
               status: Callable[[], str] | None = None) -> Span:
    """Poll Redis until the global day holds ``events`` events and every feature and every
    expected cutoff flag is final; print progress (events done, rate) every few seconds.

    Events may still be being published: ``expected`` is read only once the global day
    holds them all (they were all generated, so its sums are complete). ``status`` adds
    to each progress line (e.g. the worker's RSS).

    The span starts at the worker's first ``spend:*`` key, a user's or the global one,
    whichever comes first: the rollup stage may trail the user stage by seconds.

    ``alive`` raises when a worker died. Raises when nothing moves for :data:`STALL` s.
    """
    n = events
    first = 0.0
    last_print = last_change = time.perf_counter()
    done_before = printed_done = 0
    while True:
        now = time.perf_counter()
        done = global_events(r, prefix)
        if not first and (done or any_spend(r, prefix)):
            first = now
        if done != done_before:
            done_before, last_change = done, now
        if (done >= n and _features_final(r, prefix, expected.ledger.features)
                and _flags_final(r, prefix, expected.cutoff)):
            return Span(first, now)
        if now - last_print >= PROGRESS_EVERY:
            rate = (done - printed_done) / (now - last_print)
            extra = f", {status()}" if status is not None else ""
            print(f"  {label}: {done:,} of {n:,} events final, {rate:,.0f}/s{extra}", flush=True)
            last_print, printed_done = now, done
        if now - last_change > STALL:
            raise RuntimeError(f"{label}: no progress for {STALL:.0f}s at {done} of {n} events")
        alive()
        time.sleep(POLL)


@dataclass(frozen=True, slots=True)
class Check:
    """One exactness check: its name, whether it passed, and what was compared.

    ``ok`` is ``None`` for a check that could not be made (shown as SKIP, never a pass).
    """

    name: str
    ok: bool | None
    detail: str

    @property
    def failed(self) -> bool:
        """True only for a check that was made and did not hold."""
        return self.ok is False


def _compare(name: str, got: dict[str, Any] | None, want: Sums) -> str | None:
    """Why ``got`` (a spend key's JSON) differs from ``want``, or ``None`` when equal."""
    if got is None:
        return f"{name}: key missing"
    usd = Decimal(got["spent_usd"])
    if usd != want.usd or got["events"] != want.events:
        return (f"{name}: {usd} USD / {got['events']} events, published "
                f"{want.usd} / {want.events}")
    if "spent_tokens" in got and got["spent_tokens"] != want.tokens:
        return f"{name}: {got['spent_tokens']} tokens, published {want.tokens}"
    return None


def _mget_json(r: redis.Redis, keys: list[str], chunk: int = 5000
               ) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for i in range(0, len(keys), chunk):
        out += [None if raw is None else orjson.loads(raw)
                for raw in r.mget(keys[i:i + chunk])]  # type: ignore[union-attr]
    return out


def _scan_ids(r: redis.Redis, pattern_prefix: str) -> set[str]:
    return {k.decode()[len(pattern_prefix):]
            for k in r.scan_iter(match=pattern_prefix + "*", count=10_000)}


def _check_group(name: str, rows: list[tuple[str, dict[str, Any] | None, Sums]]) -> Check:
    bad = [why for label, got, want in rows if (why := _compare(label, got, want))]
    if bad:
        return Check(name, False, f"{len(bad)} of {len(rows)} differ, e.g. {bad[0]}")
    return Check(name, True, f"{len(rows)} of {len(rows)} exact")


def exact_checks(r: redis.Redis, prefix: str, expected: Expected) -> list[Check]:
    """Compare every total in Redis with the exact (Decimal) sum of what was published."""
    ledger = expected.ledger
    total = ledger.total
    checks = []
    day = _get(r, prefix + spend_global("day")) or {"spent_usd": "NaN", "events": None,
                                                  "spent_tokens": None}
    for what, value, sent in (("spend (USD)", Decimal(day["spent_usd"]), total.usd),
                              ("events", day["events"], total.events),
                              ("tokens", day["spent_tokens"], total.tokens)):
        checks.append(Check(f"global day: {what}", value == sent,
                            f"{value} vs published {sent}"))
    # Every bulk event carries one timestamp, so the global hour holds them all too; its key
    # expires at the hour's end (the minute's, long gone, is not checked).
    hour = _get(r, prefix + spend_global("hour"))
    if hour is not None or time.time() < expected.hour_end:
        checks.append(_check_group("global hour", [("global hour", hour, total)]))
    else:
        checks.append(Check("global hour", None, "the hour ended during the run and its key "
                                                 "expired, as documented"))
    names = sorted(ledger.features)
    got = _mget_json(r, [prefix + spend_feature(f) for f in names])
    checks.append(_check_group(f"feature totals ({len(names)})", [
        (f"feature {f}", g, ledger.features[f]) for f, g in zip(names, got, strict=True)]))
    if ledger.users is not None:
        users = sorted(ledger.users)
        got = _mget_json(r, [prefix + spend_user(u) for u in users])
        checks.append(_check_group(f"user totals ({len(users):,})", [
            (f"user {u}", g, ledger.users[u]) for u, g in zip(users, got, strict=True)]))
    for level, want in (("cutoff", expected.cutoff), ("warn", expected.warn)):  # exact sets
        found = _scan_ids(r, f"{prefix}{level}:user:")
        checks.append(Check(f"{level} flags = users over {level}", found == want,
                            f"{len(found)} flags, {len(want)} expected"
                            + ("" if found == want else
                               f"; missing {sorted(want - found)[:3]}, "
                               f"extra {sorted(found - want)[:3]}")))
    return checks


def settle_checks(r: redis.Redis, prefix: str, expected: Expected, wait: float = 10.0
                  ) -> list[Check]:
    """:func:`exact_checks`, retried for up to ``wait`` s: user keys and warn flags are
    written in the worker's batches and may trail the global total by a flush."""
    deadline = time.monotonic() + wait
    while True:
        checks = exact_checks(r, prefix, expected)
        if not any(c.failed for c in checks) or time.monotonic() > deadline:
            return checks
        time.sleep(1.0)
