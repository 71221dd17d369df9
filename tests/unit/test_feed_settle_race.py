"""A fetch that waits for room in a full feed when a rebalance settles the feed.

``_Consumer._getmany`` decides once, before it puts a fetch's partitions into the feed,
whether the flow is current; ``BatchFeed.put`` waits while the feed is full, and
``settle`` (before a rebalance) makes the waiting put give up. The fetch's *other*
partitions would then be put after the settle, into the emptied feed, but for the check
of each partition against faust's live active set, which faust empties of the revoked
partitions (all of them: aiokafka's eager protocol) before ``wait_empty``. This pins that:
once ``settle`` returned, nothing the old generation fetched is queued.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from spendstream.streams.consumer import _Consumer
from spendstream.streams.feed import BatchFeed
from tests.unit.test_batch_feed import recs

P0, P1, P2 = TP("usage", 0), TP("usage", 1), TP("usage", 2)


class _Thread:
    def __init__(self, answer: dict[TP, list[SimpleNamespace]]) -> None:
        self.answer = answer

    async def getmany(self, active, timeout):  # noqa: ANN001 - faust's signature
        return self.answer


def consumer(feed: BatchFeed, answer: dict[TP, list[SimpleNamespace]]) -> _Consumer:
    c = object.__new__(_Consumer)  # only what _getmany reads
    c.app = SimpleNamespace(feeds={"usage": feed})
    c._thread = _Thread(answer)
    c._stopped, c._crashed = asyncio.Event(), asyncio.Event()
    c.flow_active = True
    return c


async def test_a_fetch_blocked_on_a_full_feed_queues_nothing_after_settle():
    feed = BatchFeed("usage", limit=100)
    await feed.put(P0, recs(0, 1, 2, size=200))  # the feed is full
    active = {P0, P1, P2}
    c = consumer(feed, {P1: recs(10, 11), P2: recs(20, 21)})
    fetch = asyncio.create_task(c._getmany(active, 0.1))
    await asyncio.sleep(0)
    assert not fetch.done()  # waiting for room to put P1's records

    # A rebalance (faust's order): the flow stops, the revoked partitions leave the
    # active set, then wait_empty settles the feeds (and commits).
    c.flow_active = False
    active.clear()
    await feed.settle()
    assert feed.queued == 0
    await asyncio.wait_for(fetch, 1)

    queued = [(tp, [r.offset for r in rs]) for tp, rs in feed._chunks]
    assert queued == [], f"queued after settle, for revoked partitions: {queued}"
