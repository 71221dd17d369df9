"""Consumer-group membership across a crash: the member id a worker leaves on its state
directory, and the LeaveGroup that removes a dead predecessor from the group
(``streams/consumer.py``, 6).

A killed worker stays a member until its session times out, and the embedded broker
completes a join only after half the session (measured with a bare aiokafka member: 30 s
at a 60 s session, 15 s at 30 s; the worker's default of 10 s gives its 5 s), so a
restart that waited for the dead member would wait a session and a join.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.group import LeaveGroupRequest


class PreviousMember:
    """The consumer-group member id of the last process on a state directory (see the
    module docstring, 6): written after each assignment, read at start."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, group: str, member_id: str) -> None:
        """Record ``member_id`` as this process's (atomically: a crash leaves the old one)."""
        body = json.dumps({"group": group, "member_id": member_id, "pid": os.getpid()})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.replace(self.path)

    def clear(self) -> None:
        """The process left its group (a clean stop): nothing for the next start to do."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def stale(self, group: str) -> str | None:
        """The member id a dead process of ``group`` left here, or ``None`` (no file, another
        group, unreadable, or written by a process that still runs)."""
        try:
            saved = json.loads(self.path.read_text())
            member_id, pid = saved["member_id"], int(saved["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if saved.get("group") != group or not isinstance(member_id, str) or not member_id:
            return None
        if pid != os.getpid() and _running(pid):
            return None
        return member_id


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


async def leave_group(client: Any, group: str, member_id: str) -> int:
    """Send LeaveGroup for ``member_id`` to the group's coordinator; the error code
    (0: it was a member and is gone; 25, unknown member: it had left already; the embedded
    broker answers 0 to both)."""
    node = await client.coordinator_lookup(CoordinationType.GROUP, group)
    response = await client.send(node, LeaveGroupRequest(group, member_id),
                                 group=ConnectionGroup.COORDINATION)
    return int(response.error_code)


async def group_state(client: Any, group: str) -> tuple[str, frozenset[str]]:
    """The group's state (``Stable``, ``Empty``, ... as the coordinator names it) and its
    members' ids, from DescribeGroups."""
    node = await client.coordinator_lookup(CoordinationType.GROUP, group)
    response = await client.send(node, DescribeGroupsRequest([group]),
                                 group=ConnectionGroup.COORDINATION)
    described = response.groups[0]
    return str(described[2]), frozenset(str(m[0]) for m in described[5])


async def remove_dead_member(client: Any, group: str, member_id: str) -> str:
    """Send LeaveGroup for a dead process's member, but only while the group is stable
    with that member in it; what was done, for the log.

    Mid-rebalance the embedded broker must not get it: a member elected leader that died
    before its SyncGroup and is then removed by LeaveGroup stays the leader the broker
    names for good, and every other member's sync fails from then on (the group is
    wedged; without the LeaveGroup the dead member's session ends and the group
    recovers). ``bench/tansu_leader_leave.py`` shows both.
    """
    state, members = await group_state(client, group)
    if member_id not in members:
        return f"it is no longer in the group (state {state})"
    if state != "Stable":
        return (f"not removed: the group is rebalancing (state {state}), so it waits for "
                "that member's session to time out")
    code = await leave_group(client, group, member_id)
    return f"removed it with LeaveGroup (answer {code})"
