"""The worker's stages over in-memory ports: budgets, dedup, replay, alerts, late events.

The ports (state, flags, alert sink) are the seams the faust and Redis adapters plug
into; the integration tests drive the same stages through a real broker and Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from spendstream.alerts.format import render
from spendstream.contract.alert import Level
from spendstream.contract.event import UsageEvent
from spendstream.contract.keys import (
    CUTOFF_GLOBAL,
    cutoff_feature,
    cutoff_user,
    spend_feature,
    spend_global,
    spend_user,
    warn_user,
)
from spendstream.domain.budgets import Limit, parse_budgets
from spendstream.domain.pricing import Pricer
from spendstream.domain.totals import Totals
from spendstream.domain.windows import window_of
from spendstream.streams.rollup_stage import RollupStage
from spendstream.streams.stages import Counters
from spendstream.streams.state import BatchedState
from spendstream.streams.user_stage import UserStage

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BUDGETS = parse_budgets({
    "users": {"default_tier": "free", "tiers": {"free": {"usd": "0.13"}, "pro": {"usd": 1}},
              "members": {"vip": "pro"}},
    "features": {"chat": {"period": "month", "usd": "1.00"},
                 "hard": {"period": "day", "usd": "0.05", "cutoff": True}},
    "global": {"hourly_usd_alert": 5, "daily_usd": "0.50", "tokens_per_minute": 20000},
    "prices": {"m": {"input": 10, "output": 10}},  # $0.01 per 1000 tokens
})


class LoggedState(BatchedState):
    """The worker's state with its changelog kept in a list (what the faust table sends)."""

    def __init__(self) -> None:
        self.records_log: list[tuple[int, bytes, bytes | None]] = []
        super().__init__(lambda p, k, v: self.records_log.append((p, k, v)),
                         clock=NOW.timestamp)

    @property
    def data(self) -> dict[str, dict[str, Any]]:
        """Every committed key and value."""
        return {k: v for _, k, v in self.scan()}

    def restored(self) -> LoggedState:
        """A new state rebuilt from this one's changelog, as recovery after a crash does."""
        fresh = LoggedState()
        for p, k, v in self.records_log:
            fresh.apply(p, k, v)
        return fresh


class Flags:
    def __init__(self) -> None:
        self.keys: dict[str, tuple[dict[str, Any], int]] = {}

    def set(self, key, value, expire_at, *, extend_only=False):
        if extend_only and key in self.keys and self.keys[key][1] > expire_at:
            return
        # The worker hands live spend values over as JSON already encoded.
        self.keys[key] = (orjson.loads(value) if isinstance(value, bytes) else value, expire_at)

    def delete(self, key):
        self.keys.pop(key, None)


class World:
    """Both stages wired as the faust app wires them, partition 0 only."""

    def __init__(self, budgets=BUDGETS) -> None:
        self.flags, self.alerts, self.counters = Flags(), [], Counters()
        self.ustate, self.rstate = LoggedState(), LoggedState()
        sink = self.alerts.append
        self.users = UserStage(budgets, Pricer(budgets.prices), self.ustate, self.flags,
                               lambda a: sink(a) or True, timedelta(minutes=10), self.counters)
        self.rollup = RollupStage(budgets, self.rstate, self.flags, lambda a: sink(a) or True,
                                  timedelta(minutes=10), self.counters)
        self.offset = 0

    def send(self, *events: UsageEvent, offsets=None, now=NOW) -> None:
        for i, e in enumerate(events):
            off = offsets[i] if offsets else self.offset
            self.offset = max(self.offset, off + 1)
            self.users.process(0, off, e, now)
        for (source, _), parts in self.users.finish(now).items():
            self.rollup.process(0, source, self.ustate.offset(source), parts)
        self.rollup.finish(now)


def ev(user="u1", feature="chat", tokens=1000, model="m", status="ok", ts=NOW, eid=None):
    kw = {"event_id": eid} if eid else {}
    return UsageEvent(user_id=user, feature=feature, model=model, input_tokens=tokens,
                      status=status, ts=ts, **kw)


def test_user_warns_then_cuts_off_with_one_alert_and_ttl_at_day_end():
    w = World()
    day_end = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp())
    for _ in range(11):
        w.send(ev(tokens=1000))  # $0.01 each: $0.11 is 85% of $0.13
    assert "spendstream:" not in "".join(w.flags.keys)  # the prefix is the adapter's job
    assert warn_user("u1") in w.flags.keys and cutoff_user("u1") not in w.flags.keys
    w.send(ev(tokens=1000), ev(tokens=1000))
    value, expire = w.flags.keys[cutoff_user("u1")]
    assert expire == day_end
    assert value["spent"] == "0.13" and value["budget"] == "0.13" and value["unit"] == "usd"
    user_alerts = [a for a in w.alerts if a.scope == "user"]
    assert [(a.previous, a.level) for a in user_alerts] == [(Level.WARN, Level.CUTOFF)]
    spend, _ = w.flags.keys[spend_user("u1")]
    assert spend["spent_usd"] == "0.13" and spend["remaining_usd"] == "0.00"


def test_tiers_apply_per_member():
    w = World()
    w.send(*[ev(user="vip", tokens=1000) for _ in range(20)])  # $0.20 of a $1 pro budget
    assert warn_user("vip") not in w.flags.keys


def test_duplicate_event_id_counted_once_and_replay_after_crash_is_idempotent():
    w = World()
    a, b = ev(eid="a"), ev(eid="b")
    w.send(a, b, a, offsets=[0, 1, 2])  # producer retry: same id at a new offset
    assert w.counters.duplicates == 1
    w.send(a, b, a, offsets=[0, 1, 2])  # the whole batch redelivered after a crash
    w.ustate = w.users.state = w.ustate.restored()  # ... and to a worker restored from the log
    w.send(a, b, a, offsets=[0, 1, 2])
    assert w.counters.duplicates == 7
    spend, _ = w.flags.keys[spend_user("u1")]
    assert spend["events"] == 2 and spend["spent_usd"] == "0.02"
    g = w.rstate.data[f"g|*|day|{NOW:%Y-%m-%d}"]
    assert g["n"] == 2 and g["usd"] == "0.02"


def test_failed_calls_are_free_but_counted():
    w = World()
    w.send(ev(status="error", tokens=5000))
    spend, _ = w.flags.keys[spend_user("u1")]
    assert spend["spent_usd"] == "0" and spend["events"] == 1


def test_failed_calls_drain_no_token_tier_and_no_tokens_per_minute():
    """15,000 failed tokens against a 10,000-token tier and a 20,000 tokens-per-minute
    ceiling (30,000 with the rest): counted as calls, no flag."""
    w = World(parse_budgets({"users": {"tiers": {"free": {"tokens": 10000}}},
                             "global": {"tokens_per_minute": 20000},
                             "prices": {"m": {"input": 10, "output": 10}}}))
    w.send(*[ev(status="error", tokens=1000) for _ in range(15)])
    w.send(*[ev(user="u2", status="error", tokens=1000) for _ in range(15)])
    w.send(ev(tokens=100))
    spend, _ = w.flags.keys["spend:user:u1"]
    assert spend["events"] == 16 and spend["spent_tokens"] == 100
    assert not [k for k in w.flags.keys if k.startswith(("cutoff:", "warn:"))]
    minute = w.flags.keys["spend:global:minute"][0]
    assert minute["events"] == 31 and minute["failed_events"] == 30
    assert minute["spent_tokens"] == 100


def test_feature_alert_at_120_percent_is_one_message_per_transition():
    w = World(parse_budgets({"features": {"chat": {"usd": "1.00"}}, "prices": {
        "m": {"input": 10, "output": 10}}}))
    w.send(*[ev(user=f"u{i}", tokens=1000) for i in range(85)])     # 85%: warn
    w.send(*[ev(user=f"v{i}", tokens=1000) for i in range(40)])     # 125%: cutoff+alert
    w.send(*[ev(user=f"x{i}", tokens=1000) for i in range(10)])     # 135%: nothing new
    levels = [a.level for a in w.alerts if a.scope == "feature" and a.kind == "budget"]
    assert levels == [Level.WARN, Level.ALERT]
    assert cutoff_feature("chat") not in w.flags.keys  # soft budget by default


def test_hard_feature_budget_writes_the_cutoff_flag():
    w = World()
    w.send(*[ev(user=f"u{i}", feature="hard", tokens=1000) for i in range(6)])
    value, expire = w.flags.keys[cutoff_feature("hard")]
    assert value["scope"] == "feature" and value["id"] == "hard"
    assert expire == int(datetime(2026, 11, 24, tzinfo=UTC).timestamp())


def test_global_daily_cap_and_tokens_per_minute():
    w = World()
    w.send(*[ev(user=f"u{i}", tokens=1000) for i in range(25)])  # 25k tokens in a minute
    value, expire = w.flags.keys[CUTOFF_GLOBAL]
    assert value["id"] == "tpm"
    assert expire == int((NOW + timedelta(minutes=1)).timestamp())
    w.send(*[ev(user=f"v{i}", tokens=1000) for i in range(30)])  # $0.55 > $0.50 daily cap
    value, expire = w.flags.keys[CUTOFF_GLOBAL]
    assert value["id"] == "daily_cap"
    assert expire == int(datetime(2026, 11, 24, tzinfo=UTC).timestamp())
    w.send(ev(user="z", tokens=30000, ts=NOW + timedelta(minutes=1)),
           now=NOW + timedelta(minutes=1))  # a later tpm trip must not shorten the daily flag
    assert w.flags.keys[CUTOFF_GLOBAL][0]["id"] == "daily_cap"
    assert [a.kind for a in w.alerts if a.scope == "global"] == ["daily_cap"]


def test_unknown_model_is_unpriced_and_alerted_once_never_free():
    w = World()
    w.send(*[ev(model="brand-new-model-9000", tokens=1000) for _ in range(5)])
    unpriced = [a for a in w.alerts if a.kind == "unpriced"]
    assert len(unpriced) == 1 and unpriced[0].subject == "brand-new-model-9000"
    spend, _ = w.flags.keys[spend_user("u1")]
    assert spend["unpriced_events"] == 5
    assert w.counters.unpriced == 5


def test_late_events_within_grace_count_in_their_window_later_ones_as_late():
    w = World()
    yesterday = NOW - timedelta(days=1)
    just_after_midnight = datetime(2026, 11, 23, 0, 5, tzinfo=UTC)
    w.send(ev(ts=datetime(2026, 11, 22, 23, 59, tzinfo=UTC)), now=just_after_midnight)
    assert "u|u1|2026-11-22" in w.ustate.data and w.counters.late == 0
    w.send(ev(ts=yesterday))  # 12h after its day ended, grace is 10 min
    assert w.counters.late == 1
    assert w.ustate.data["late|u1|2026-11-22"]["n"] == 1
    assert w.ustate.data["u|u1|2026-11-22"]["n"] == 1


def test_sweep_drops_only_expired_windows():
    w = World()
    w.send(ev(ts=NOW))
    assert w.users.sweep(NOW) == 0
    assert w.users.sweep(NOW + timedelta(days=3)) == 4  # the day, minute, hour, day windows
    dropped = w.users.sweep(NOW + timedelta(days=45))  # and the month partial
    assert dropped > 0 and not w.ustate.data
    assert not w.ustate.restored().data  # the deletions are in the changelog too


@pytest.mark.parametrize("user", ["a|b", "x|2026-11-23"])
def test_ids_with_separators(user):
    w = World()
    w.send(*[ev(user=user, tokens=1000) for _ in range(13)])
    assert cutoff_user(user) in w.flags.keys


def audited(local: int, reported: int, **kw) -> UsageEvent:
    return UsageEvent(user_id=kw.pop("user", "u1"), feature="chat", model="m",
                      provider="acme", input_tokens=reported, local_input_tokens=local,
                      ts=NOW, **kw)


@pytest.mark.parametrize(("reported", "alerted"), [(1000, False), (1090, False),
                                                   (1150, True), (800, True)])
def test_token_inflation_audit_alerts_once_past_the_drift_threshold(reported, alerted):
    w = World()
    w.send(*[audited(1000, reported, user=f"u{i}") for i in range(19)])
    assert not [a for a in w.alerts if a.kind == "token_drift"]  # too few calls to judge
    w.send(*[audited(1000, reported, user=f"v{i}") for i in range(30)])
    drift = [a for a in w.alerts if a.kind == "token_drift"]
    assert len(drift) == (1 if alerted else 0)
    if alerted:
        a = drift[0]
        assert a.subject == "acme/m" and a.unit == "tokens"
        assert a.percent == Decimal(reported) / 10  # provider / local
        assert ("more" if reported > 1000 else "fewer") in a.detail


def test_estimated_and_failed_events_are_left_out_of_the_audit():
    w = World()
    w.send(*[audited(1000, 2000, user=f"u{i}", estimated=True) for i in range(30)])
    w.send(*[audited(1000, 2000, user=f"v{i}", status="error") for i in range(30)])
    assert not [a for a in w.alerts if a.kind == "token_drift"]
    assert not any(k.startswith("drift|") for k in w.rstate.data)
    assert all("au" not in v for v in w.ustate.data.values())  # user state stays small


def test_answers_cut_at_the_output_cap_are_counted_per_feature():
    w = World()
    w.send(*[UsageEvent(user_id=f"u{i}", feature="chat", model="m", output_tokens=100,
                        finish_reason="length" if i % 3 == 0 else "stop", ts=NOW)
             for i in range(9)])
    spend, _ = w.flags.keys[spend_feature("chat")]
    assert spend["length_finishes"] == 3 and spend["events"] == 9
    assert w.flags.keys[spend_global("day")][0]["length_finishes"] == 3


def test_the_spend_key_shows_the_live_window_only():
    """``spend:user`` and the global and feature spend keys are written for the window that
    is open now only: never for one that has not started (an event dated a little ahead
    of the worker's clock), never for one that is over."""
    w = World()
    w.send(ev(tokens=1000, ts=NOW + timedelta(hours=12, minutes=2)))  # tomorrow, 2 min on
    assert "spend:user:u1" not in w.flags.keys
    assert "spend:global:day" not in w.flags.keys and "spend:feature:chat" in w.flags.keys
    w.send(ev(tokens=2000))  # today, after it
    spend, expire = w.flags.keys["spend:user:u1"]
    assert spend["spent_usd"] == "0.02" and spend["window_end"] == "2026-11-24T00:00:00Z"
    assert w.flags.keys["spend:global:day"][0]["spent_usd"] == "0.02"
    w.send(ev(user="u2", tokens=1000, ts=NOW - timedelta(days=1)))  # yesterday: over
    assert "spend:user:u2" not in w.flags.keys


def test_dedup_identity_is_user_and_event_id():
    """Two users' events with one ``event_id`` (two producers that number their own events)
    are two events; the same user's is a duplicate."""
    w = World()
    w.send(ev(user="u1", eid="e-1"), ev(user="u2", eid="e-1"), ev(user="u1", eid="e-1"))
    assert w.counters.events == 2 and w.counters.duplicates == 1
    assert w.flags.keys["spend:user:u2"][0]["events"] == 1


def test_an_hourly_spike_is_a_warning_and_reads_once():
    w = World(parse_budgets({"global": {"hourly_usd_alert": "0.05"},
                             "prices": {"m": {"input": 10, "output": 10}}}))
    w.send(*[ev(user=f"u{i}", tokens=1000) for i in range(6)])  # $0.06 in the hour
    [spike] = [a for a in w.alerts if a.kind == "spike"]
    assert (spike.level, spike.subject) == (Level.WARN, "hourly")
    assert "cutoff:global" not in w.flags.keys
    assert render(spike)[0].startswith("spendstream WARN: global hourly spike at 120.0%")


def test_a_feature_without_a_hard_cap_is_never_announced_as_cutoff():
    w = World(parse_budgets({"features": {"soft": {"usd": "0.10"},
                                          "hard": {"usd": "0.10", "cutoff": True}},
                             "prices": {"m": {"input": 10, "output": 10}}}))
    for i in range(13):  # to 130%
        w.send(ev(user=f"u{i}", feature="soft", tokens=1000),
               ev(user=f"v{i}", feature="hard", tokens=1000))
    soft = [a.level for a in w.alerts if a.subject == "soft" and a.kind == "budget"]
    hard = [a.level for a in w.alerts if a.subject == "hard" and a.kind == "budget"]
    assert soft == [Level.WARN, Level.ALERT] and "cutoff:feature:soft" not in w.flags.keys
    assert hard == [Level.WARN, Level.CUTOFF, Level.ALERT]
    assert "cutoff:feature:hard" in w.flags.keys


def test_calls_and_cache_hits_are_counted_per_feature_once_each():
    w = World()
    hit = UsageEvent(user_id="u1", feature="faq", model="m", cache_hit=True, ts=NOW,
                     event_id="h1")
    w.send(ev(feature="faq"), hit, ev(feature="chat"), hit, offsets=[0, 1, 2, 3])  # a retry
    assert w.counters.by_feature() == {"faq": (2, 1), "chat": (1, 0)}
    assert w.counters.duplicates == 1
    # The feature's live spend key carries its hit rate (summed over source partitions).
    spend, _ = w.flags.keys[spend_feature("faq")]
    assert (spend["events"], spend["cache_hits"], spend["cache_hit_rate"]) == (2, 1, 0.5)
    assert w.flags.keys[spend_feature("chat")][0]["cache_hit_rate"] == 0.0
    assert w.rstate.restored().data[f"f|faq|month|{NOW:%Y-%m}"]["hit"] == 1


@pytest.mark.parametrize(("limit", "grant", "budget"), [
    (None, None, {}),
    (Limit(usd=Decimal("0.13")), None,
     {"budget_usd": "0.13", "budget_tokens": None, "remaining_usd": "0.01"}),
    (Limit(tokens=5000), None,
     {"budget_usd": None, "budget_tokens": 5000, "remaining_tokens": 2600}),
    (Limit(usd=Decimal("0.10"), tokens=1000), (Decimal("0.05"), 0),
     {"budget_usd": "0.10", "budget_tokens": 1000, "remaining_usd": "0",
      "remaining_tokens": 0, "granted_usd": "0.05", "granted_tokens": 0}),
])
@pytest.mark.parametrize("user", ["u1", 'quo"te\\back', "ユーザー", "tab|pipe</script>"])
def test_the_live_spend_value_is_the_contract_json(limit, grant, budget, user):
    # The worker writes this JSON as text (its most frequent write): it must parse to the
    # contract's fields whatever the id holds and whichever budget applies.
    w = World()
    day = window_of("day", NOW)
    totals = Totals(usd=Decimal("0.12"), tokens=2400, events=3, unpriced=1)
    w.users._publish_spend(user, day, totals, "free", limit, grant)
    value, expire = w.flags.keys[spend_user(user)]
    assert expire == day.end_epoch
    assert value == {"scope": "user", "id": user, "tier": "free", "spent_usd": "0.12",
                     "spent_tokens": 2400, "events": 3, "unpriced_events": 1,
                     "window_start": day.start_text, "window_end": day.end_text, **budget}
