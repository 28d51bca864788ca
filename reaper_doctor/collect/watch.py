"""Light samples for `watch`: a plan from one full sample, then a tree kept
up to date at the cost of its members and the new PIDs."""

from __future__ import annotations

import os
import socket
import time
from typing import (
    TYPE_CHECKING,
    NamedTuple,
)

from ..model import Snapshot, WatchSample
from ..parse import procfs
from . import proc
from .cgroups import read_cgroup_int
from .fds import count_fds
from .proc import ProcessGone, read_bytes, read_int
from .sockets import close_wait_on_ports
from .tasks import descendants, last_pid, pids_since, process_table, read_brief

if TYPE_CHECKING:
    from .tasks import TaskBrief

# watch: a light sample per interval


class WatchPlan(NamedTuple):
    """What one full sample at the start of `watch` tells the light ones."""

    target: int
    start_ticks: int                # with target: the same process, not a reused PID
    uid: int | None                 # real UID, for the task count
    listen_ports: frozenset[int]    # TCP ports the tree listened on at the start
    listen_families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
    same_netns: bool = False               # inet_diag (our netns) sees the target's sockets
    pids_cgroup_dir: str | None = None


def plan_watch(snap: Snapshot) -> WatchPlan:
    me = snap.processes[snap.target]
    ports = frozenset(s.local[1] for fds in snap.fds.values() for s in fds.listeners
                      if s.proto.startswith("tcp"))
    try:
        same = os.readlink(f"{proc.ROOT}/self/ns/net") == os.readlink(f"{proc.ROOT}/{snap.target}/ns/net")
    except OSError:
        same = False
    families = tuple(sorted({socket.AF_INET6 if s.proto == "tcp6" else socket.AF_INET
                             for fds in snap.fds.values() for s in fds.listeners}))
    cg = snap.pids_cgroup
    return WatchPlan(target=snap.target, start_ticks=me.start_ticks, uid=me.uid,
                     listen_ports=ports, listen_families=families, same_netns=same,
                     pids_cgroup_dir=cg.path if cg and cg.current is not None else None)


class TreeTracker:
    """The target's tree and its user's task count, kept up to date at a
    cost that follows the tree and the fork rate, not the machine.

    A full process_table() pass costs ~30 us per process on the machine
    (0.4 s with 12,000 processes). Between full passes the tree is
    refreshed from its members' status files plus the PIDs allocated since
    the last sample (the last PID in /proc/loadavg): a new process is in
    the tree when its parent is. Full passes are spaced so that they take
    at most FULL_SCAN_SHARE of the time; the task count of the user, a
    machine-wide figure, is refreshed by them and carried in between.
    """

    FULL_SCAN_SHARE = 0.02
    MAX_PROBE = 4096          # more new PIDs than this: a full pass is cheaper

    def __init__(self, target: int, uid: int | None) -> None:
        self.target, self.uid = target, uid
        self.members: dict[int, TaskBrief] = {}
        self.tasks: int | None = None
        self.pid_max = read_int(f"{proc.ROOT}/sys/kernel/pid_max") or 4194304
        self.next_full = 0.0
        self.last: int | None = None
        self.full()

    def full(self) -> None:
        started = time.monotonic()
        self.last = last_pid()
        table = process_table()
        self.members = {p: table[p] for p in descendants(table, self.target) if p in table}
        if self.uid is not None:
            self.tasks = sum(b.threads for b in table.values() if b.uid == self.uid)
        cost = time.monotonic() - started
        self.next_full = time.monotonic() + cost / self.FULL_SCAN_SHARE

    def refresh(self) -> None:
        if time.monotonic() >= self.next_full:
            self.full()
            return
        now_last = last_pid()
        new = pids_since(self.last, now_last, self.pid_max, self.MAX_PROBE)
        if new is None:
            self.full()
            return
        self.last = now_last
        members: dict[int, TaskBrief] = {}
        for pid in self.members:           # parents before children (descendants order)
            brief = read_brief(pid)
            if brief is not None and (pid == self.target or brief.ppid in members):
                members[pid] = brief
        for pid in new:                    # allocation order: parents first
            if pid in members:
                continue
            brief = read_brief(pid)
            if brief is not None and brief.ppid in members:
                members[pid] = brief
        self.members = members

    @property
    def zombies(self) -> int:
        return sum(1 for pid, b in self.members.items() if b.state == "Z" and pid != self.target)


def watch_sample(plan: WatchPlan, tracker: TreeTracker, t0: float) -> WatchSample:
    """One light sample for `watch`. Its cost does not grow with the
    target's descriptors: the fd count is one stat() (count_fds),
    CLOSE_WAIT an inet_diag dump filtered by state in the kernel, the tree
    a TreeTracker refresh. No descriptor link is read.

    CLOSE_WAIT counts the sockets in that state on a port the tree
    listened on at the start (its accepted connections); None where the
    tables cannot be read. Raises ProcessGone when the target has exited
    (gone, a zombie, or its PID reused).
    """
    pid = plan.target
    try:
        st = procfs.parse_stat(read_bytes(f"{proc.ROOT}/{pid}/stat"))
    except OSError:
        raise ProcessGone(pid) from None
    if st.state in ("Z", "X") or st.start_ticks != plan.start_ticks:
        raise ProcessGone(pid)
    t_s = time.monotonic() - t0
    fds = count_fds(pid)
    tracker.refresh()
    current = (read_cgroup_int(f"{plan.pids_cgroup_dir}/pids.current")
               if plan.pids_cgroup_dir else None)
    return WatchSample(t_s=t_s, zombies=tracker.zombies, fds=fds,
                       close_wait=close_wait_on_ports(pid, plan.listen_ports, plan.same_netns,
                                                      plan.listen_families),
                       tasks=tracker.tasks, pids_cgroup=current)
