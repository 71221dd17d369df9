"""What the worker's agents do with one batch, without faust: records in; rollup messages,
dead letters and changelog recovery out.

The faust app (``app.py``) only takes batches from its topics and hands them here, so
everything between a fetched batch and what the stages decide is testable without Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from spendstream.contract.control import MARKER, control_of
from spendstream.contract.decode import Horizon, decode_events
from spendstream.contract.event import MAX_FUTURE_SECONDS, Decoded, MalformedEvent
from spendstream.contract.rollup import MalformedRollup, RollupMessage
from spendstream.streams.grants import apply_control
from spendstream.streams.rollup_stage import RollupStage
from spendstream.streams.state import BatchedState
from spendstream.streams.user_stage import Forward, UserStage

log = logging.getLogger("spendstream.worker")

POSITIONS = 1 << 16
"""An event's position is ``offset * POSITIONS + index in its record``: stage two's version
of a partial, increasing even between two commits inside one packed record."""
COMMIT_BYTES = 512 * 1024
"""Bound of what one changelog record of the user stage may carry (estimated per event by
:func:`changelog_weight`): a commit happens before any partition's record reaches it, so
every record stays within Kafka's default 1 MiB message limit whatever a batch holds.
Each partition logs its own record, so the bound is per partition: a batch over four
partitions commits a quarter as often as a bound on their sum would (the per-user work
of a commit, judging and logging each touched window, then covers more events)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One fetched Kafka record: where it came from and its value."""

    partition: int
    offset: int
    value: bytes | None
    source: Any = None
    """Whatever the caller needs to dead-letter it (the faust event)."""


DeadLetter = Callable[[Record, str, "bytes | None"], Awaitable[None]]
"""Send a record (or, with bytes, one bad element of it) to the DLQ with the reason."""
Send = Callable[[bytes, bytes, "int | None"], Awaitable[None]]
"""Send one message (key, value) to a topic, to the given partition (``None``: by key)."""
Route = Callable[[str], int]
"""The rollup topic's partition of a message key (the producer's partitioner)."""
FORWARD_BYTES = 256 * 1024
"""Bound of one rollup message's windows (estimated by :func:`part_weight`): a batch that
touches many windows sends several messages, each far within Kafka's 1 MiB default."""


def part_weight(key: str) -> int:
    """At most what one window's partial adds to a rollup message (key and sums)."""
    return 160 + len(key)


def changelog_weight(event: Decoded) -> int:
    """At most what one event adds to a changelog record: its id digest, its user's window
    and the feature, audit and unpriced windows it may create (keys and values)."""
    return 240 + len(event.user_id) + len(event.feature) + 2 * len(event.model)


def packed_element(value: bytes | None, index: int) -> bytes | None:
    """Element ``index`` of a packed record as JSON (what goes to the DLQ for it), or
    ``None`` for a single-event record (the record itself goes)."""
    if value is None or value[:1] != b"[":  # decode_events' rule
        return None
    return orjson.dumps(orjson.loads(value)[index])


class UserBatches:
    """Stage one's loop body: decode, dead-letter the malformed, fold the rest, commit
    within :data:`COMMIT_BYTES`, and forward the partial sums to the rollup topic."""

    def __init__(self, users: UserStage, state: BatchedState, fresh: set[int], forward: Send,
                 dead_letter: DeadLetter, kick: Callable[[], None], *, topic: str = "",
                 max_future_seconds: float = MAX_FUTURE_SECONDS,
                 route: Route | None = None) -> None:
        self.users = users
        self.route = route
        """With it, the partials of one source partition bound for the same rollup
        partition travel as one message (a few per batch instead of one per feature);
        without, one message per message key."""
        self.topic = topic
        """The usage topic: with a record's partition and offset, the id of an event that
        came without one."""
        self.max_future_seconds = max_future_seconds
        self.state = state
        self.fresh = fresh
        """Partitions assigned since their last batch (kept by the changelog table): their
        partials are resent once."""
        self.forward = forward
        self.dead_letter = dead_letter
        self.kick = kick

    async def process(self, records: Sequence[Record], now: datetime) -> None:
        """Count one batch."""
        if self.fresh:
            for p in {r.partition for r in records} & self.fresh:
                self.users.resend(p)
                self.fresh.discard(p)
        weights: dict[int, int] = {}
        horizon = Horizon(now, self.max_future_seconds)
        process = self.users.process
        for record in records:
            if record.value and MARKER in record.value and await self._control(record, now):
                continue
            origin = (self.topic, record.partition, record.offset)
            try:
                decoded = decode_events(record.value, horizon, origin)
            except Exception as e:  # the decoder's own bug: one record, not the agent
                log.exception("could not decode record %d/%d", record.partition, record.offset)
                await self.dead_letter(record, f"could not decode: {e!r}", None)
                continue
            # One event, or a packed record: each element has its own position, so the
            # state may be committed between two elements of one record.
            partition, position = record.partition, record.offset * POSITIONS
            weight = weights.get(partition, 0)
            for i, event in enumerate(decoded):
                if isinstance(event, MalformedEvent):
                    await self.dead_letter(record, event.reason, event.element)
                    continue
                try:  # process() changes nothing when it raises: no half-counted event
                    process(partition, position + i, event, now)
                except Exception as e:  # issue 11: one event never stops the others
                    log.exception("could not count event %r of record %d/%d", event.event_id,
                                  partition, record.offset)
                    await self.dead_letter(record, f"could not count: {e!r}",
                                           packed_element(record.value, i))
                    continue
                weight += changelog_weight(event)
                if weight >= COMMIT_BYTES:
                    await self.finish(now)
                    weights.clear()
                    weight = 0
            weights[partition] = weight
        await self.finish(now)

    async def _control(self, record: Record, now: datetime) -> bool:
        """Apply the record if it is a grant or unblock (``streams/grants.py``); a broken
        one goes to the DLQ. ``False``: a usage event that merely holds the word."""
        try:
            control = control_of(record.value)
        except MalformedEvent as e:
            await self.dead_letter(record, e.reason, None)
            return True
        if control is None:
            return False
        apply_control(self.users, record.partition, control, now)
        return True

    async def finish(self, now: datetime) -> None:
        """Judge, log the state and forward the partials of what was folded so far."""
        forward = self.users.finish(now)
        if self.route is None:
            for (p, key), parts in forward.items():
                message = RollupMessage(p, self.state.offset(p), parts)
                await self.forward(key.encode(), message.encode(), None)
        else:
            await self._forward_grouped(forward, self.route)
        self.kick()

    async def _forward_grouped(self, forward: Forward, route: Route) -> None:
        """One message per (source partition, rollup partition), split at
        :data:`FORWARD_BYTES`. Each window still lands on the partition its own key routes
        to, so stage two keeps every window on one partition, whatever the grouping."""
        groups: dict[tuple[int, int], tuple[str, dict[str, Any], int]] = {}
        for (p, key), parts in forward.items():
            target = route(key)
            first, merged, weight = groups.get((p, target), (key, {}, 0))
            for name, sums in parts.items():
                merged[name] = sums
                weight += part_weight(name)
                if weight >= FORWARD_BYTES:
                    await self._send(p, first, merged, target)
                    merged, weight = {}, 0
            groups[(p, target)] = (first, merged, weight)
        for (p, target), (first, merged, _) in groups.items():
            if merged:
                await self._send(p, first, merged, target)

    async def _send(self, p: int, key: str, parts: dict[str, Any], partition: int) -> None:
        message = RollupMessage(p, self.state.offset(p), parts)
        await self.forward(key.encode(), message.encode(), partition)


class RollupBatches:
    """Stage two's loop body: merge each source partition's partials, then judge."""

    def __init__(self, features: RollupStage, dead_letter: DeadLetter,
                 kick: Callable[[], None]) -> None:
        self.features = features
        self.dead_letter = dead_letter
        self.kick = kick

    async def process(self, records: Sequence[Record], now: datetime) -> None:
        """Take one batch of rollup messages; a malformed one goes to the DLQ."""
        for record in records:
            try:  # internal topic, but a stray producer must not crash-loop the agent
                message = RollupMessage.decode(record.value)
                self.features.process(record.partition, message.source, message.version,
                                      message.parts)
            except MalformedRollup as e:
                await self.dead_letter(record, str(e), None)
            except (AttributeError, ValueError, TypeError, KeyError, ArithmeticError) as e:
                await self.dead_letter(record, f"malformed rollup message: {e!r}", None)
        self.features.finish(now)
        self.kick()


def recover(state: BatchedState, records: Iterable[tuple[int, bytes | None, bytes | None]]
            ) -> int:
    """Replay changelog records (partition, key, value) into ``state``; return how many
    were skipped. A record without a key is not one this worker wrote: it is skipped with
    a warning instead of stopping recovery."""
    skipped = 0
    for partition, key, value in records:
        if key is None:
            skipped += 1
            log.warning("skipped a changelog record without a key (partition %d): not "
                        "written by a spendstream worker", partition)
            continue
        state.apply(partition, key, value)
    return skipped
