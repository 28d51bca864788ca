"""Census rules: which parents reap orphans for a living (slow reapers), and
each UID's tasks against its RLIMIT_NPROC. The zombie, limit and descriptor
rules themselves are those of `scan PID` (zombies.py, limits.py, fds.py)."""

from __future__ import annotations

from collections import Counter
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
    tasks: Counter[int] = Counter()
    processes: Counter[int] = Counter()
    by_uid: dict[int, list[tuple[int | None, int | None, int, int]]] = {}
    for pid, brief in table.items():
        if brief.uid is None:
            continue
        tasks[brief.uid] += brief.threads
        processes[brief.uid] += 1
        lim = limits.get(pid)
        if lim and "Max processes" in lim:
            soft, hard = lim["Max processes"]
            by_uid.setdefault(brief.uid, []).append((soft, hard, -brief.threads, pid))
    rows = []
    for uid, count in tasks.items():
        held = by_uid.get(uid, [])
        soft = hard = soft_min = soft_min_pid = None
        if held:
            (soft, hard), _ = Counter((s, h) for s, h, _, _ in held).most_common(1)[0]
            finite = [h for h in held if h[0] is not None]
            if finite:
                low = min(finite)
                soft_min, soft_min_pid = low[0], low[3]
        rows.append(UidTasks(uid=uid, tasks=count, processes=processes[uid], soft=soft, hard=hard,
                             soft_min=soft_min, soft_min_pid=soft_min_pid, enforced=uid != 0))
    rows.sort(key=lambda r: (-(r.ratio or 0), -r.tasks, r.uid))
    return rows
