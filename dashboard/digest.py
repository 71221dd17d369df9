"""The weekly digest: per feature, the week's spend, month to date against the pro-rated
budget (over / on track / under), the response cache's hit rate of every feature that
caches (flagged under :data:`LOW_HIT_RATE`: the cache is not helping), and the top movers
against the week before.

:func:`build` reads the ledger; :func:`render` is the text that ``spendstream report
--digest`` prints and the worker posts to Slack on the ``SPENDSTREAM_DIGEST_AT`` schedule
(:func:`next_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

from spendstream.dashboard import ledger_reads as reads
from spendstream.dashboard.budget_view import pace_status
from spendstream.dashboard.periods import elapsed_fraction, money, period_bounds
from spendstream.domain.budgets import Budgets
from spendstream.errors import ConfigError
from spendstream.ledger.queries import Filters, cache_hits

if TYPE_CHECKING:
    import psycopg

PERIOD_LENGTH = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1),
                 "day": timedelta(days=1)}
MOVERS = 5
LOW_HIT_RATE = Decimal("0.20")
"""A caching feature answering fewer of the week's calls than this from the cache is
flagged: its calls are rarely identical, so the cache costs a lookup and saves little."""
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class FeatureLine:
    """One feature's line of the digest."""

    feature: str
    week: Decimal
    previous_week: Decimal
    month_to_date: Decimal
    prorated: Decimal | None
    """The budget pro-rated to the digest's time; None: the feature has no USD budget."""
    status: str | None
    calls: int = 0
    """The week's calls."""
    cache_hits: int | None = None
    """The week's calls answered from the response cache; None: the feature does not cache."""

    @property
    def hit_rate(self) -> Decimal | None:
        """The week's share of calls answered from the cache (None: no cache, or no calls)."""
        if self.cache_hits is None or not self.calls:
            return None
        return Decimal(self.cache_hits) / Decimal(self.calls)

    @property
    def caching_not_helping(self) -> bool:
        """The feature caches, had calls, and fewer than :data:`LOW_HIT_RATE` of them hit."""
        rate = self.hit_rate
        return rate is not None and rate < LOW_HIT_RATE


@dataclass(frozen=True)
class Digest:
    """The week ending at ``end`` (UTC)."""

    start: datetime
    end: datetime
    features: list[FeatureLine]
    movers: list[tuple[str, str, Decimal, Decimal]]
    """(``feature`` or ``user``, name, this week, the week before), largest change first."""
    total: Decimal


def prorated_budget(budget: Decimal, period: str, month_start: datetime, now: datetime
                    ) -> Decimal:
    """What a feature's budget allows from the month's start to ``now``: a monthly budget
    times the month's share gone, a daily (hourly...) one times the days (hours...) gone."""
    if period == "month":
        month_end = period_bounds("month", now)[1]
        return budget * elapsed_fraction(month_start, month_end, now)
    periods = Decimal(str((now - month_start) / PERIOD_LENGTH[period]))
    return budget * periods


def build(conn: psycopg.Connection[tuple[Any, ...]], budgets: Budgets, now: datetime
          ) -> Digest:
    """The digest of the 7 days before ``now``."""
    end = now.astimezone(UTC)
    start, before = end - timedelta(days=7), end - timedelta(days=14)
    month_start = period_bounds("month", end - timedelta(microseconds=1))[0]

    def sums(by: reads.Dimension, s: datetime, e: datetime) -> dict[str, Decimal]:
        return {r.key: r.spend for r in reads.spend_by(conn, by, s, e)}

    week_rows = reads.spend_by(conn, "feature", start, end)
    week = {r.key: r.spend for r in week_rows}
    calls = {r.key: r.calls for r in week_rows}
    caching = [name for name, conf in budgets.features.items() if conf.cache is not None]
    hits = cache_hits(conn, Filters(start, end)) if caching else {}
    previous = sums("feature", before, start)
    mtd = sums("feature", month_start, end)
    lines = []
    for name in list(budgets.features) + sorted((set(week) | set(mtd)) - set(budgets.features)):
        conf = budgets.features.get(name)
        prorated = status = None
        if conf is not None and conf.usd is not None:
            prorated = prorated_budget(conf.usd, conf.period, month_start, end).quantize(
                Decimal("0.01"))
            status = pace_status(mtd.get(name, Decimal(0)), prorated)
        lines.append(FeatureLine(name, week.get(name, Decimal(0)),
                                 previous.get(name, Decimal(0)), mtd.get(name, Decimal(0)),
                                 prorated, status, calls.get(name, 0),
                                 hits.get(name, 0) if name in caching else None))
    users, users_before = sums("user", start, end), sums("user", before, start)
    movers = [("feature", n, line.week, line.previous_week) for n, line in
              ((x.feature, x) for x in lines)]
    movers += [("user", u, users.get(u, Decimal(0)), users_before.get(u, Decimal(0)))
               for u in set(users) | set(users_before)]
    movers = [m for m in movers if m[2] != m[3]]
    movers.sort(key=lambda m: (-abs(m[2] - m[3]), m[0], m[1]))
    return Digest(start, end, lines, movers[:MOVERS], sum(week.values(), Decimal(0)))


def _usd(value: Decimal) -> str:
    """Cents, or two significant digits below a cent: a feature that spent $0.000018 is
    not a feature that spent nothing."""
    cents = value.quantize(Decimal("0.01"))
    if cents or not value:
        return "$" + (money(cents) or "0")
    return "$" + (money(value.quantize(Decimal(1).scaleb(value.adjusted() - 1))) or "0")


def _percent(rate: Decimal) -> str:
    """One decimal (84.6%), rounded down: 19.96% must not read as the 20% it is flagged
    for being under; a whole number drops its ``.0``."""
    text = f"{(rate * 100).quantize(Decimal('0.1'), ROUND_FLOOR):f}"
    return f"{text.removesuffix('.0')}%"


def _change(now: Decimal, before: Decimal) -> str:
    delta = now - before
    sign = "+" if delta >= 0 else "-"
    pct = f" ({sign}{abs(delta) / before * 100:.0f}%)" if before else " (new)"
    return f"{sign}{_usd(abs(delta))}{pct}"


def render(d: Digest) -> str:
    """The digest as plain text (Slack shows it as is)."""
    lines = [f"spendstream weekly digest: {d.start:%Y-%m-%d %H:%M} to {d.end:%Y-%m-%d %H:%M} UTC",
             f"spent this week: {_usd(d.total)}", ""]
    for f in d.features:
        budget = (f"month to date {_usd(f.month_to_date)} of {_usd(f.prorated)} pro-rated: "
                  f"{(f.status or '').upper()}" if f.prorated is not None
                  else f"month to date {_usd(f.month_to_date)} (no budget)")
        rate = f.hit_rate
        cache = ("" if rate is None else
                 f"; cache hit rate {_percent(rate)} ({f.cache_hits} of {f.calls} calls)")
        lines.append(f"- {f.feature}: week {_usd(f.week)} "
                     f"({_change(f.week, f.previous_week)} on the week before); {budget}"
                     f"{cache}")
    if not d.features:
        lines.append("- no spend and no features in the budgets file")
    low = [f for f in d.features if f.caching_not_helping]
    if low:
        lines += ["", f"caching not helping (cache hit rate under {_percent(LOW_HIT_RATE)} "
                      "this week; check what varies between the calls, or turn the cache off):"]
        lines += [f"- {f.feature}: {_percent(f.hit_rate or Decimal(0))} of {f.calls} calls "
                  "answered from the cache" for f in low]
    lines += ["", "top movers against the week before:"]
    lines += [f"- {kind} {name}: {_usd(now)} ({_change(now, before)})"
              for kind, name, now, before in d.movers] or ["- none"]
    return "\n".join(lines)


def parse_schedule(text: str) -> tuple[int, int, int]:
    """``mon 09:00`` (UTC) as (weekday 0-6, hour, minute); a clear error otherwise."""
    parts = text.strip().lower().split()
    try:
        day = DAYS.index(parts[0][:3])
        hour_text, minute_text = parts[1].split(":")
        hour, minute = int(hour_text), int(minute_text)
        if len(parts) != 2 or not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except (ValueError, IndexError):
        raise ConfigError(f"SPENDSTREAM_DIGEST_AT={text!r}: give a weekday and a UTC time, "
                          "e.g. 'mon 09:00'") from None
    return day, hour, minute


def next_run(schedule: tuple[int, int, int], now: datetime) -> datetime:
    """The first time at or after ``now`` that matches ``schedule``."""
    day, hour, minute = schedule
    now = now.astimezone(UTC)
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    at += timedelta(days=(day - now.weekday()) % 7)
    return at if at >= now else at + timedelta(days=7)
