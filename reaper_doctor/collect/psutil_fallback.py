"""The portable fallback where there is no /proc (macOS, BSD): the tree,
zombies and descriptor counts through psutil. Signal dispositions, exit
statuses, descriptor kinds and cgroups need /proc and are reported as
unavailable, never guessed."""

from __future__ import annotations

import time

from ..model import LimitUsage, ProcessInfo, Snapshot, Unreadable

UNAVAILABLE = "not available on this platform (needs Linux /proc)"


def collect_snapshot_psutil(target: int) -> Snapshot:
    import psutil

    from .proc import ProcessGone

    try:
        root = psutil.Process(target)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        raise ProcessGone(target) from None
    processes: dict[int, ProcessInfo] = {}
    nofile: dict[int, LimitUsage] = {}
    unreadable = [Unreadable(target, f, UNAVAILABLE)
                  for f in ("sigchld", "exit_status", "fd kinds", "pids cgroup")]
    now = time.time()
    for proc in members:
        try:
            with proc.oneshot():
                status = proc.status()
                is_zombie = status == psutil.STATUS_ZOMBIE
                num_fds = None
                if not is_zombie and hasattr(proc, "num_fds"):
                    try:
                        num_fds = proc.num_fds()
                    except psutil.AccessDenied:
                        unreadable.append(Unreadable(proc.pid, "fds", "permission denied"))
                try:
                    cmdline = None if is_zombie else tuple(proc.cmdline())
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    cmdline = None
                created = proc.create_time()
                processes[proc.pid] = ProcessInfo(
                    pid=proc.pid, ppid=proc.ppid(), name=proc.name(),
                    state="Z" if is_zombie else "S", start_ticks=int(created * 100),
                    age_s=max(0.0, now - created), threads=0 if is_zombie else proc.num_threads(),
                    uid=proc.uids().real, cmdline=cmdline, num_fds=num_fds)
                if num_fds is not None:
                    nofile[proc.pid] = LimitUsage(used=num_fds, soft=None, hard=None)
        except psutil.NoSuchProcess:
            if proc.pid == target:
                raise ProcessGone(target) from None
        except psutil.AccessDenied:
            unreadable.append(Unreadable(proc.pid, "process", "permission denied"))
    return Snapshot(target=target, taken_at=time.monotonic(), processes=processes,
                    nofile=nofile, unreadable=tuple(unreadable))
