"""The whole machine in one pass, for `scan` with no PID (the census)."""

from __future__ import annotations

import heapq
import os
import time
from typing import NamedTuple

from ..model import LimitUsage, PidsCgroup, ProcessInfo, Snapshot, Unreadable
from ..parse import procfs
from . import proc
from .cache import ProcessCache
from .cgroups import pids_cgroup, pids_cgroups_with_limits
from .namespaces import MachineNamespaces, machine_namespaces
from .proc import ProcessGone, map_io, read_int, read_proc_files, read_small, read_text
from .process import new_context, nproc_usage, read_process
from .snapshot import dedupe
from .tasks import TaskBrief, process_table


class MachineSample(NamedTuple):
    """One pass over every process on the machine."""

    taken_at: float                                   # time.monotonic()
    table: dict[int, TaskBrief]                       # every process (with names)
    zombies: dict[int, ProcessInfo]                   # every zombie
    sessions: dict[int, int]                          # zombie PID -> its session ID
    limits: dict[int, dict[str, tuple[int | None, int | None]]]  # live processes we could read
    fd_counts: dict[int, int]                         # processes whose descriptors were counted
    fds_skipped: int                                  # not counted: too far from the limit to rank
    fds_unreadable: int                               # not counted: permission denied
    pids_cgroups: list[PidsCgroup]                    # every pids cgroup with a pids.max
    file_nr: tuple[int, int, int] | None              # fs.file-nr: allocated, unused, file-max
    pid_max: int | None
    tasks: int                                        # tasks on the machine (each takes a PID)
    unreadable: list[Unreadable]
    namespaces: MachineNamespaces | None = None


def collect_machine(*, fd_top: int = 10, fd_floor: float = 0.8,
                    cache: ProcessCache | None = None) -> MachineSample:
    """Every process, every zombie, every process's limits, and the
    descriptor counts of the processes that may be nearest their soft
    RLIMIT_NOFILE.

    Counting is skipped where it cannot change the answer: FDSize (the
    descriptor table's size) bounds the open count from above, so once
    `fd_top` processes are counted and no uncounted one could reach the
    `fd_top`-th ratio or `fd_floor` (the warning threshold), the rest are
    left out. A process read without its FDSize (a warm read of `cache`)
    is always counted.
    """
    ctx = new_context()
    taken_at = time.monotonic()
    table = process_table(details=True, cache=cache)
    zombies: dict[int, ProcessInfo] = {}
    sessions: dict[int, int] = {}
    limits: dict[int, dict[str, tuple[int | None, int | None]]] = {}
    live: list[int] = []
    if cache is not None:
        cache.next_census(table)
    for pid, brief in table.items():
        if brief.state == "Z":
            kept = cache.get("zombie", pid, brief.ino, refresh=False) if cache else None
            if kept is not None and kept[0].ppid == brief.ppid:   # not re-parented since
                zombies[pid], sessions[pid] = kept
                continue
            try:
                st = procfs.parse_stat(read_small(f"{proc.ROOT}/{pid}/stat"))
                zombies[pid] = read_process(pid, ctx, brief, wants_sigchld=False, stat=st)
                sessions[pid] = st.session
            except (OSError, ProcessGone, ValueError, IndexError):
                continue  # reaped since the table was read
            if cache is not None:
                cache.put("zombie", pid, brief.ino, (zombies[pid], st.session))
        elif cache is not None and (kept := cache.get("limits", pid, brief.ino)) is not None:
            limits[pid] = kept
        else:
            live.append(pid)
    # Only ulimit -n and ulimit -u matter here: found in each file, not parsed.
    for pid, raw in zip(live, read_proc_files(live, "limits")):
        if raw is not None:
            limits[pid] = procfs.parse_some_limits(raw)
            if cache is not None:
                cache.put("limits", pid, table[pid].ino, limits[pid])
    fd_counts, skipped, denied = _count_fds_nearest(table, limits, fd_top, fd_floor)
    try:
        file_nr: tuple[int, int, int] | None = procfs.parse_file_nr(
            read_text(f"{proc.ROOT}/sys/fs/file-nr"))
    except (OSError, ValueError):
        file_nr = None
    return MachineSample(
        taken_at=taken_at, table=table, zombies=zombies, sessions=sessions, limits=limits,
        fd_counts=fd_counts, fds_skipped=skipped, fds_unreadable=denied,
        pids_cgroups=pids_cgroups_with_limits(), file_nr=file_nr,
        pid_max=read_int(f"{proc.ROOT}/sys/kernel/pid_max"),
        tasks=sum(b.threads for b in table.values()), unreadable=ctx.unreadable,
        namespaces=machine_namespaces(table, cache))


def _fd_count(pid: int) -> int:
    """Open descriptors of `pid`: Linux 6.2 and later give the count as the
    size of /proc/PID/fd (a stat: ~4x cheaper than listing it, and allowed
    where listing it is not); older kernels say 0 there, and then it is
    listed. Raises OSError."""
    fd_dir = f"{proc.ROOT}/{pid}/fd"
    return os.stat(fd_dir).st_size or len(os.listdir(fd_dir))


DENIED, GONE = -1, -2


def _fd_count_or(pid: int) -> int:
    """_fd_count(pid), or DENIED or GONE."""
    try:
        return _fd_count(pid)
    except PermissionError:
        return DENIED
    except OSError:
        return GONE


def _count_fds_nearest(table: dict[int, TaskBrief],
                       limits: dict[int, dict[str, tuple[int | None, int | None]]],
                       top: int, floor: float) -> tuple[dict[int, int], int, int]:
    unknown: list[int] = []                  # no FDSize read this census: counted, all at once
    candidates: list[tuple[float, int]] = []  # (FDSize / soft limit: the highest ratio, pid)
    softs: dict[int, int] = {}
    for pid, lim in limits.items():
        soft = lim.get("Max open files", (None, None))[0]
        if not soft:
            continue  # unlimited: no ratio
        softs[pid] = soft
        size = table[pid].fd_size
        if size is None:
            unknown.append(pid)
        else:
            candidates.append((size / soft, pid))
    candidates.sort(reverse=True)
    counts: dict[int, int] = {}
    best: list[float] = []   # min-heap of the `top` highest ratios counted so far
    denied = 0

    def counted(pid: int, count: int) -> None:
        nonlocal denied
        if count < 0:
            denied += count == DENIED
            return
        counts[pid] = count
        ratio = count / softs[pid]
        if len(best) < top:
            heapq.heappush(best, ratio)
        elif ratio > best[0]:
            heapq.heapreplace(best, ratio)

    for pid, count in zip(unknown, map_io(_fd_count_or, unknown)):
        counted(pid, count)
    for i, (bound, pid) in enumerate(candidates):
        if len(best) >= top and bound < floor and bound < best[0]:
            return counts, len(candidates) - i, denied
        counted(pid, _fd_count_or(pid))
    return counts, 0, denied


def resample_zombies(zombies: dict[int, ProcessInfo]) -> tuple[float, dict[int, ProcessInfo]]:
    """Read the stat of each of `zombies` again: those still zombies now."""
    ctx = new_context()
    taken_at = time.monotonic()
    now: dict[int, ProcessInfo] = {}
    for pid, before in zombies.items():
        brief = TaskBrief(ppid=before.ppid, uid=before.uid, threads=1, state="Z")
        try:
            info = read_process(pid, ctx, brief, wants_sigchld=False)
        except ProcessGone:
            continue
        if info.is_zombie:
            now[pid] = info
    return taken_at, now


def read_processes(pids: list[int], table: dict[int, TaskBrief]
                   ) -> tuple[dict[int, ProcessInfo], dict[int, int]]:
    """Each of `pids` in full (with its SIGCHLD disposition) and its session
    ID; processes that are gone are left out."""
    ctx = new_context()
    infos: dict[int, ProcessInfo] = {}
    sessions: dict[int, int] = {}
    for pid in pids:
        try:
            st = procfs.parse_stat(read_small(f"{proc.ROOT}/{pid}/stat"))
            infos[pid] = read_process(pid, ctx, table.get(pid), wants_sigchld=True, stat=st)
            sessions[pid] = st.session
        except (OSError, ProcessGone, ValueError, IndexError):
            continue
    return infos, sessions


def collect_census_target(info: ProcessInfo, zombie_children: dict[int, ProcessInfo],
                          sample: MachineSample) -> Snapshot:
    """A Snapshot of one process the census has findings about: the process,
    its zombie children and its limits. Its descriptors are counted, not
    classified (a readlink per descriptor plus the socket table: 0.3-0.7 s
    for one process with 20,000), and its live descendants are not walked:
    `scan PID` does both."""
    ctx = new_context()
    pid = info.pid
    processes: dict[int, ProcessInfo] = {**zombie_children}
    nofile: dict[int, LimitUsage] = {}
    limits = sample.limits.get(pid)
    if not info.is_zombie:
        if pid in sample.fd_counts:
            info = info._replace(num_fds=sample.fd_counts[pid])
        soft, hard = (limits or {}).get("Max open files", (None, None))
        nofile[pid] = LimitUsage(used=info.num_fds, soft=soft, hard=hard)
    processes[pid] = info
    return Snapshot(
        target=pid, taken_at=time.monotonic(), processes=processes, nofile=nofile,
        nproc=nproc_usage(pid, info, sample.table, limits, ctx), pids_cgroup=pids_cgroup(pid, ctx),
        pid_max=sample.pid_max, pids_in_use=sample.tasks,
        unreadable=tuple(dedupe(ctx.unreadable)))
