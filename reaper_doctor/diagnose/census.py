"""Census rules: which parents reap orphans for a living (slow reapers), and
each UID's tasks against its RLIMIT_NPROC. The zombie, limit and descriptor
rules themselves are those of `scan PID` (zombies.py, limits.py, fds.py)."""

from __future__ import annotations

import math
from typing import Mapping

from ..model import ProcessInfo, UidTasks
from ..model.process import TaskBrief

# Parents known to reap orphans for a living (they are PID 1 or subreapers):
# their zombies come and go, so they get PID 1's longer grace.
INIT_LIKE = frozenset({
    "systemd", "init", "tini", "dumb-init", "catatonit", "docker-init", "s6-svscan",
    "runsvdir", "containerd-shim", "containerd-shim-runc-v2", "conmon",
})


def slow_reapers(by_parent: dict[int, dict[int, ProcessInfo]], parents: dict[int, ProcessInfo],
                 parent_sessions: dict[int, int], zombie_sessions: dict[int, int]) -> set[int]:
    """PID 1 and the parents that look like subreapers: /proc does not show
    the subreaper flag, so infer it from a known init-like
    name, or from adopted children: most of its zombies are in another
    session than the parent, which a plain fork() does not do."""
    slow = {1}
    for ppid, zombies in by_parent.items():
        parent = parents.get(ppid)
        if parent and (parent.name in INIT_LIKE or parent.is_ns_init):
            slow.add(ppid)
            continue
        session = parent_sessions.get(ppid)
        if session is None:
            continue
        foreign = sum(1 for pid in zombies if zombie_sessions.get(pid, session) != session)
        if foreign * 2 > len(zombies):
            slow.add(ppid)
    return slow


def uid_tasks(table: Mapping[int, TaskBrief],
              limits: Mapping[int, Mapping[str, tuple[int | None, int | None]]]
              ) -> list[UidTasks]:
    """Tasks per real UID, against the most common soft RLIMIT_NPROC of its
    processes (and the lowest, which fails first). `limits`: the parsed
    /proc/<pid>/limits of the processes that could be read."""
    tasks: dict[int, int] = {}
    processes: dict[int, int] = {}
    # uid -> (soft, hard) -> processes; uid -> the lowest finite soft limit,
    # by (soft, hard, most threads, PID)
    pairs: dict[int, dict[tuple[int | None, int | None], int]] = {}
    lowest: dict[int, tuple[int, float, int, int]] = {}
    for pid, brief in table.items():
        uid = brief.uid
        if uid is None:
            continue
        tasks[uid] = tasks.get(uid, 0) + brief.threads
        processes[uid] = processes.get(uid, 0) + 1
        lim = limits.get(pid)
        pair = lim.get("Max processes") if lim else None
        if pair is None:
            continue
        held = pairs.get(uid)
        if held is None:
            held = pairs[uid] = {}
        held[pair] = held.get(pair, 0) + 1
        soft, hard = pair
        if soft is not None:
            key = (soft, math.inf if hard is None else hard, -brief.threads, pid)
            low = lowest.get(uid)
            if low is None or key < low:
                lowest[uid] = key
    rows = []
    for uid, count in tasks.items():
        held = pairs.get(uid)
        soft = hard = None
        if held:
            soft, hard = max(held, key=held.__getitem__)   # the first of the most common
        low = lowest.get(uid)
        rows.append(UidTasks(uid=uid, tasks=count, processes=processes[uid], soft=soft, hard=hard,
                             soft_min=low[0] if low else None,
                             soft_min_pid=low[3] if low else None, enforced=uid != 0))
    rows.sort(key=lambda r: (-(r.ratio or 0), -r.tasks, r.uid))
    return rows
