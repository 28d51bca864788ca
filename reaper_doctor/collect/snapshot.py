"""One full sample of a target and its descendants: a Snapshot."""

from __future__ import annotations

import gc
import time
from typing import (
    TYPE_CHECKING,
    Mapping,
)

from ..model import FdTable, LimitUsage, ProcessInfo, Snapshot, Unreadable
from . import proc
from .cgroups import pids_cgroup
from .fds import read_fds
from .proc import ProcessGone, has_procfs, read_int
from .process import new_context, nproc_usage, read_limits, read_process
from .sockets import close_wait_where_uid_listens, look_at_queued
from .tasks import add_machine, read_tree

if TYPE_CHECKING:
    from .process import SampleContext

def collect_snapshot(target: int, *, with_fds: bool = True,
                     with_fd_list: bool = False) -> Snapshot:
    """One sample of `target` and all its descendants.

    Raises ProcessGone when the target itself does not exist. Descendants
    that vanish mid-sample are left out; fields we may not read are listed
    in `Snapshot.unreadable`.
    """
    if not has_procfs():
        from .psutil_fallback import collect_snapshot_psutil

        return collect_snapshot_psutil(target)
    # A sample makes tens of thousands of small objects and no reference
    # cycles: the cyclic collector's passes over them are wasted (~4% of a
    # scan of 20,000 descriptors).
    collecting = gc.isenabled()
    gc.disable()
    ctx = new_context(with_fd_list)
    try:
        return _collect_snapshot(target, ctx, with_fds=with_fds)
    finally:
        if ctx.reading_sockets is not None:
            ctx.reading_sockets.join()  # read ahead for a process that then vanished
        if collecting:
            gc.enable()


def _collect_snapshot(target: int, ctx: SampleContext, *, with_fds: bool) -> Snapshot:
    # The tree first, the rest of the machine (for RLIMIT_NPROC and the PIDs
    # in use) after its descriptors: a listener's queue is read at the
    # start of the sample, not after thousands of other processes.
    tree = read_tree(target, machine=False)
    table = tree.table
    ctx.statuses = tree.statuses
    parents = {st.ppid for st in tree.stats.values()}
    processes: dict[int, ProcessInfo] = {}
    fds: dict[int, FdTable] = {}
    nofile: dict[int, LimitUsage] = {}
    target_limits = None
    for pid in tree.order:
        try:
            st = tree.stats[pid]
            info = read_process(pid, ctx, table.get(pid), stat=st,
                                wants_sigchld=pid == target or pid in parents,
                                parent=processes.get(st.ppid))
            if pid == target:
                target_limits = read_limits(pid, ctx)
            if not info.is_zombie and not info.is_kernel_thread:
                limits = target_limits if pid == target else read_limits(pid, ctx)
                table_fds = read_fds(pid, ctx) if with_fds else None
                if table_fds is not None:
                    fds[pid] = table_fds
                    info = info._replace(num_fds=table_fds.open)
                soft, hard = (limits or {}).get("Max open files", (None, None))
                nofile[pid] = LimitUsage(used=info.num_fds, soft=soft, hard=hard)
        except ProcessGone:
            if pid == target:
                raise
            continue
        processes[pid] = info
    queue_holders = look_at_queued(holders_of_queued(fds)) if fds else {}
    add_machine(tree)
    target_info = processes[target]
    target_parent = None
    if target_info.is_zombie and target_info.ppid > 0:
        try:
            target_parent = read_process(target_info.ppid, ctx, table.get(target_info.ppid),
                                          wants_sigchld=True)
        except ProcessGone:
            pass
    # Another user's descriptors: what sock_diag, open to all, shows instead.
    close_wait_of_uid: dict[int, int] = {}
    if (with_fds and target not in fds and target_info.uid is not None
            and not target_info.is_zombie and not target_info.is_kernel_thread):
        close_wait_of_uid = close_wait_where_uid_listens(target, target_info.uid)
    return Snapshot(
        target=target, taken_at=time.monotonic(), processes=processes, fds=fds, nofile=nofile,
        nproc=nproc_usage(target, target_info, table, target_limits, ctx),
        pids_cgroup=pids_cgroup(target, ctx),
        pid_max=read_int(f"{proc.ROOT}/sys/kernel/pid_max"),
        pids_in_use=sum(b.threads for b in table.values()),
        unreadable=tuple(dedupe(ctx.unreadable)), target_parent=target_parent,
        accept_queue_peers=dict(ctx.queue_peers), queue_holders=queue_holders,
        reader_uid=ctx.my_uid,
        close_wait_of_uid=close_wait_of_uid)


def holders_of_queued(fds: Mapping[int, FdTable]) -> dict[int, list[int]]:
    """{inode: PIDs holding it} of the listening sockets with a queue."""
    holders: dict[int, list[int]] = {}
    for pid, table in fds.items():
        for s in table.listeners:
            if s.rx_queue:
                holders.setdefault(s.inode, []).append(pid)
    return holders


def dedupe(items: list[Unreadable]) -> list[Unreadable]:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
