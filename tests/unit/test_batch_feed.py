"""The worker's batch feed and its previous-member file (``streams/consumer.py``, 5 and 6)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from faust.types import TP

from spendstream.streams.feed import BatchFeed
from spendstream.streams.membership import PreviousMember

A, B = TP("usage", 0), TP("usage", 1)


def recs(*offsets: int, size: int = 10) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=o, value=b"x" * size) for o in offsets]


async def test_take_hands_whole_fetches_in_order_and_finished_marks_them_committable():
    feed = BatchFeed("usage", limit=1 << 20)
    await feed.put(A, recs(0, 1, 2))
    await feed.put(B, recs(7))
    await feed.put(A, recs(3, 4))
    first = await feed.take(most=4)  # whole chunks: 3 + 1, not the next 2
    assert [(tp, [r.offset for r in rs]) for tp, rs in first] == [(A, [0, 1, 2]), (B, [7])]
    assert feed.counted == {}  # taken is not counted
    feed.finished(first)
    assert feed.counted == {A: 3, B: 8}
    rest = await feed.take(most=1)  # at least one chunk, even over ``most``
    assert [r.offset for r in rest[0][1]] == [3, 4]
    feed.finished(rest)
    assert feed.counted == {A: 5, B: 8} and feed.read == {A: 4, B: 7}
    feed.forget([A])
    assert feed.counted == {B: 8} and feed.read == {B: 7}


async def test_put_waits_for_room_and_settle_drops_what_waits_and_what_is_queued():
    feed = BatchFeed("usage", limit=100)
    await feed.put(A, recs(0, size=200))  # over the limit: the next put waits
    blocked = asyncio.create_task(feed.put(A, recs(1)))
    await asyncio.sleep(0)
    assert not blocked.done()
    taken = await feed.take(10)  # room again: the waiting put goes in
    await asyncio.wait_for(blocked, 1)
    assert feed.queued > 0
    settling = asyncio.create_task(feed.settle())
    await asyncio.sleep(0)
    assert not settling.done() and feed.queued == 0  # dropped, and waiting for the batch
    feed.finished(taken)
    await asyncio.wait_for(settling, 1)
    assert feed.counted == {A: 1}  # offset 1 was dropped, never counted nor committed
    await feed.put(A, recs(0, size=200))
    blocked = asyncio.create_task(feed.put(A, recs(1)))
    await asyncio.sleep(0)
    await feed.settle()  # nothing in hand: returns at once; the waiting put gives up
    await asyncio.wait_for(blocked, 1)
    assert feed.queued == 0


async def test_an_abandoned_batch_releases_settle_and_is_not_committed():
    feed = BatchFeed("usage", limit=1 << 20)
    await feed.put(A, recs(0))
    await feed.take(10)
    settling = asyncio.create_task(feed.settle())
    await asyncio.sleep(0)
    assert not settling.done()
    feed.abandon()
    await asyncio.wait_for(settling, 1)
    assert feed.counted == {}


def test_previous_member_is_used_only_when_its_process_is_gone(tmp_path: Path):
    path = tmp_path / "app.member.json"
    previous = PreviousMember(path)
    assert previous.stale("app") is None  # no file
    previous.save("app", "member-1")
    assert previous.stale("app") == "member-1"  # this process wrote it
    assert previous.stale("other-app") is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    path.write_text(json.dumps({"group": "app", "member_id": "m-dead",
                                "pid": int(dead.stdout)}))
    assert previous.stale("app") == "m-dead"
    path.write_text(json.dumps({"group": "app", "member_id": "m-live", "pid": os.getppid()}))
    assert previous.stale("app") is None  # a running worker's: never expelled
    for garbage in ("", "{", "[]", '{"group": "app", "member_id": 7, "pid": 1}'):
        path.write_text(garbage)
        assert previous.stale("app") is None, garbage
