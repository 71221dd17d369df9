"""Synthetic usage traffic for the throughput benchmark, and the exact totals it must give.

The traffic looks like a real product's: many users with a skewed activity (a few heavy
users, a long tail), ~30 features, several models. Half the successful calls carry the
provider's ``cost_usd`` (deliberately 10% under the table price, so a worker that re-prices
them would be caught); the rest leave the price to the worker. About 1% of calls fail
(counted, free), 3% stop at their output cap, 30% read a prompt cache and half carry the
app's own prompt count (``local_input_tokens``, within 3% of the provider's, so no drift
alert). Every sum is kept in :class:`Ledger` with ``Decimal`` money, computed with the same
price table the worker uses.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson

from spendstream.domain.pricing import Pricer

FEATURES = (
    "chat", "search", "summarize", "translate", "classify", "extract", "autocomplete",
    "code_review", "support_bot", "email_draft", "sql_assist", "rewrite", "tagging",
    "moderation", "doc_qa", "agent_plan", "agent_act", "report", "insights", "onboarding",
    "faq", "voice_notes", "meeting_summary", "ticket_triage", "sentiment", "recommend",
    "title_gen", "alt_text", "changelog", "quick_answer",
)
MODELS = (  # (model, provider, weight)
    ("gpt-4o", "openai", 3),
    ("gpt-4o-mini", "openai", 5),
    ("claude-sonnet-4-5", "anthropic", 2),
    ("claude-haiku-4-5", "anthropic", 2),
)
FREE_USD = Decimal(1000)
"""Everyday users' daily budget: high enough that none of them is flagged."""
CAPPED_USD = Decimal("0.02")
"""The ``capped`` tier: a few events take a user over it, so some users are cut off."""
PROBE_USD = Decimal("0.01")
"""The ``probe`` tier of the latency phase; one probe event costs :data:`PROBE_COST`."""
PROBE_COST = "0.02"
FEATURE_USD = 1_000_000
"""Monthly budget per feature: never reached, so feature totals are the only output."""
WARN, CUTOFF = Decimal("0.8"), Decimal("1.0")
"""The default thresholds, which the benchmark's budgets file keeps."""
PROVIDER_DISCOUNT = Decimal("0.9")


def check_models(pricer: Pricer) -> None:
    """Fail early when the bundled price table no longer knows a benchmark model."""
    missing = [m for m, p, _ in MODELS if pricer.price(m, p, 1000, 100) is None]
    if missing:
        raise SystemExit(f"genai-prices does not price {missing}: change MODELS")


def write_budgets(path: Path, capped: list[str], probes: list[str]) -> Path:
    """The worker's budgets file: a generous default tier, a tiny ``capped`` tier for the
    flag checks, a ``probe`` tier for the latency probes, 30 features, no global caps."""
    members = {u: "capped" for u in capped} | {u: "probe" for u in probes}
    budgets = {
        "users": {"default_tier": "free", "members": members,
                  "tiers": {"free": {"usd": str(FREE_USD)}, "capped": {"usd": str(CAPPED_USD)},
                            "probe": {"usd": str(PROBE_USD)}}},
        "features": {f: {"period": "month", "usd": FEATURE_USD} for f in FEATURES},
    }
    path.write_bytes(orjson.dumps(budgets))  # JSON is YAML
    return path


@dataclass(slots=True)
class Sums:
    """Exact sums of one scope: what its ``spend:*`` key must say."""

    usd: Decimal = Decimal(0)
    tokens: int = 0
    events: int = 0

    def add(self, usd: Decimal, tokens: int) -> None:
        """Count one event."""
        self.usd += usd
        self.tokens += tokens
        self.events += 1


@dataclass(slots=True)
class Ledger:
    """Everything published, summed exactly: globally, per feature and (optionally) per user."""

    total: Sums = field(default_factory=Sums)
    features: dict[str, Sums] = field(default_factory=dict)
    users: dict[str, Sums] | None = field(default_factory=dict)

    def add(self, user: str, feature: str, usd: Decimal, tokens: int) -> None:
        """Count one published event."""
        self.total.add(usd, tokens)
        sums = self.features.get(feature)
        if sums is None:
            sums = self.features[feature] = Sums()
        sums.add(usd, tokens)
        if self.users is not None:
            u = self.users.get(user)
            if u is None:
                u = self.users[user] = Sums()
            u.add(usd, tokens)

    def flagged(self, users: Iterable[str], budget: Decimal, level: Decimal) -> set[str]:
        """The users among ``users`` whose spend reached ``level`` of ``budget``."""
        assert self.users is not None
        return {u for u in users if u in self.users and self.users[u].usd >= budget * level}


@dataclass(frozen=True, slots=True)
class Expected:
    """What the worker must end up writing: the ledger's sums and the exact flag sets."""

    ledger: Ledger
    hour_end: float
    """When the hour of the events' timestamp ends (epoch seconds): the ``spend:global:hour``
    key expires then."""
    capped: tuple[str, ...] = ()

    @property
    def cutoff(self) -> frozenset[str]:
        """The capped users at 100% of the tier's budget (read once publishing is done)."""
        return self._flagged(CUTOFF)

    @property
    def warn(self) -> frozenset[str]:
        """The capped users at 80% or more: each has a warn flag (a jump straight to the
        cutoff sets both)."""
        return self._flagged(WARN)

    def _flagged(self, level: Decimal) -> frozenset[str]:
        if self.ledger.users is None:
            return frozenset()
        return frozenset(self.ledger.flagged(self.capped, CAPPED_USD, level))


class Traffic:
    """A seeded stream of usage events (Kafka key and value) with their exact totals.

    ``users`` everyday users are drawn with a skew (user ``i`` with density ~ 1/sqrt(i));
    ``capped`` users in the ``capped`` tier receive ``capped_share`` of the events. With
    ``distinct`` every event has a user of its own (``user-0``, ``user-1``, ...).
    """

    def __init__(self, ts: datetime, users: int = 100_000, capped: int = 0,
                 capped_share: float = 0.0, distinct: bool = False, track_users: bool = True,
                 seed: int = 1, user_prefix: str = "user") -> None:
        self.rng = random.Random(seed)
        self.ts = ts
        self.ts_text = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.users = users
        self.capped = [f"capped-{i}" for i in range(capped)]
        self.capped_share = capped_share
        self.distinct = distinct
        self.user_prefix = user_prefix
        self.ledger = Ledger(users={} if track_users else None)
        self.pricer = Pricer()
        check_models(self.pricer)
        self._models = [(m, p) for m, p, w in MODELS for _ in range(w)]
        self._next = 0

    def _user(self) -> str:
        if self.distinct:
            self._next += 1
            return f"{self.user_prefix}-{self._next - 1}"
        if self.capped and self.rng.random() < self.capped_share:
            return self.rng.choice(self.capped)
        return f"{self.user_prefix}-{int(self.users * self.rng.random() ** 2)}"

    def event(self) -> tuple[bytes, bytes]:
        """One event as (key, value) bytes; its cost and tokens are added to the ledger."""
        rng = self.rng
        user, feature = self._user(), rng.choice(FEATURES)
        model, provider = rng.choice(self._models)
        inp, out = rng.randint(50, 4000), rng.randint(10, 1000)
        cached = rng.randint(0, inp) if rng.random() < 0.3 else 0
        ev: dict[str, object] = {
            "schema": 1, "event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "ts": self.ts_text,
            "user_id": user, "feature": feature, "model": model, "provider": provider,
            "input_tokens": inp, "output_tokens": out, "cached_input_tokens": cached,
            "status": "ok", "finish_reason": "length" if rng.random() < 0.03 else "stop"}
        if rng.random() < 0.5:
            ev["local_input_tokens"] = max(0, inp + int(inp * rng.uniform(-0.03, 0.03)))
        cost = Decimal(0)
        if rng.random() < 0.01:
            ev["status"], ev["finish_reason"] = "error", None
        else:
            price = self.pricer.price(model, provider, inp, out, cached, self.ts)
            assert price is not None  # check_models made sure
            if rng.random() < 0.5:
                cost = price * PROVIDER_DISCOUNT
                ev["cost_usd"] = str(cost)
            else:
                cost = price
        # A failed call is counted but drains no tokens (the worker's rule, see the budgets guide).
        self.ledger.add(user, feature, cost, inp + out if ev["status"] == "ok" else 0)
        return user.encode(), orjson.dumps(ev)

    def expected(self) -> Expected:
        """What the worker must write for the events of this traffic (a live view: the
        sums grow as events are generated)."""
        hour_end = (self.ts.timestamp() // 3600 + 1) * 3600
        return Expected(self.ledger, hour_end, tuple(self.capped))

    def probe(self, user: str, ts_text: str) -> tuple[bytes, bytes]:
        """A latency probe: one event costing :data:`PROBE_COST` (over the probe tier's
        budget) for ``user``; not added to the ledger."""
        ev = {"schema": 1, "event_id": uuid.uuid4().hex, "ts": ts_text, "user_id": user,
              "feature": "chat", "model": "gpt-4o", "provider": "openai", "input_tokens": 900,
              "output_tokens": 200, "status": "ok", "cost_usd": PROBE_COST}
        return user.encode(), orjson.dumps(ev)
