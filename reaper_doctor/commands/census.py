"""`scan` with no PID: the whole machine.

Every parent that holds zombies (with the same persistence check and
verdicts as `scan PID`), the orphans waiting on PID 1 or a subreaper, the
processes nearest their ulimit -n, each UID's tasks against ulimit -u, the
pids cgroups nearest pids.max, and the system-wide file and PID tables.

collect/machine.py reads, diagnose/ judges (the same zombie_findings /
limit_findings as `scan PID`), the renderers print.
"""

from __future__ import annotations

import heapq
import time
from typing import Callable, Iterator, Mapping, NamedTuple

from ..collect.cgroups import cgroup_member
from ..collect.listeners import (
    SocketCensus,
    find_holders,
    holder_tables,
    read_socket_census,
    reread_socket_census,
)
from ..collect.machine import (
    MachineSample,
    ProcessCache,
    collect_census_target,
    collect_machine,
    read_processes,
    resample_zombies,
)
from ..collect.namespaces import MachineNamespaces
from ..collect.proc import require_procfs
from ..collect.process import has_cap_exemption
from ..diagnose.census import slow_reapers, uid_tasks
from ..diagnose.containers import pid1_findings
from ..diagnose.fds import accept_backlog_findings, close_wait_findings, fd_growth_findings
from ..diagnose.limits import WARN_RATIO, nofile_findings, nproc_findings, pids_cgroup_findings
from ..diagnose.zombies import PID1_GRACE_S, persistent_zombies, zombie_findings
from ..model import (
    Container,
    ContainerRow,
    FdCounts,
    Finding,
    LimitUsage,
    ListenerQueue,
    MachineCensus,
    NofileUsage,
    NprocUsage,
    ProcessInfo,
    Report,
    Severity,
    Snapshot,
    SocketHolder,
    TargetReport,
    ZombieParent,
)
from ..parse.containers import is_known_init

TOP_NOFILE = 10
TOP_CGROUPS = 5


class Baseline(NamedTuple):
    """One census's zombies and sockets, for a later one to judge against."""

    taken_at: float                          # time.monotonic() of its zombie sample
    zombies: dict[int, ProcessInfo]
    sockets: SocketCensus | None
    holders: frozenset[int]                  # PIDs that held the sockets it explained


class CensusState(NamedTuple):
    """What a census leaves for the next ones (the exporter's censuses, one
    after another): its recent samples, oldest first, so that a census can
    judge against one at least the grace old without sleeping; descriptor
    counts of the last censuses; what is kept of each process."""

    baselines: tuple[Baseline, ...]
    fd_series: tuple[FdCounts, ...]
    cache: ProcessCache | None = None


# Censuses of descriptor counts kept for RD203 (it needs at least three).
FD_HISTORY = 6
# Recent samples kept to judge persistence against (censuses every second
# need the one from three seconds ago when PID 1 holds zombies).
MAX_BASELINES = 16


def census(*, grace_s: float = 1.0, sleep: Callable[[float], None] = time.sleep,
           sockets: bool = True) -> Report:
    """Sample the machine; with grace_s > 0 re-read its zombies `grace_s`
    later (PID1_GRACE_S when PID 1 or a subreaper holds some) and judge
    persistence by (PID, start time), as `scan PID` does. `sockets`: also
    read every network namespace's listeners and CLOSE_WAIT sockets (RD201,
    RD401), re-read after the grace too when one has something to explain."""
    return census_after(None, grace_s=grace_s, sleep=sleep, sockets=sockets)[0]


def census_after(earlier: CensusState | None, *, grace_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, sockets: bool = True,
                 cache: ProcessCache | None = None) -> tuple[Report, CensusState]:
    """A census judged against the newest of `earlier`'s samples that is at
    least the grace old (no sleep: the exporter's previous censuses), else
    as `census` does; and the state the next census judges against. PIDs
    that are gone are forgotten: the state holds this census's processes
    only. `cache`, or the one `earlier` carries: zombies, limits and
    network namespaces kept from census to census (see ProcessCache).
    Raises ProcUnavailable where there is no /proc."""
    require_procfs("scan with no PID")
    if cache is None and earlier is not None:
        cache = earlier.cache
    now = collect_machine(fd_top=TOP_NOFILE, fd_floor=WARN_RATIO, cache=cache)
    now_sockets = read_socket_census(now.table, cache) if sockets else None
    now_by_parent = _by_parent(now.zombies)
    parents, parent_sessions = read_processes(sorted(now_by_parent), now.table)
    slow = slow_reapers(now_by_parent, parents, parent_sessions, now.sessions)
    wait_s = grace_s
    if slow & set(now_by_parent):
        wait_s = max(wait_s, PID1_GRACE_S)
    then_zombies, then_at, then_sockets = now.zombies, now.taken_at, now_sockets
    later_zombies, later_at, later_sockets, samples = now.zombies, now.taken_at, now_sockets, 1
    recent = earlier.baselines if earlier is not None else ()
    old_enough = [b for b in recent if now.taken_at - b.taken_at >= wait_s]
    if grace_s > 0 and old_enough:
        base = old_enough[-1]
        then_zombies, then_at, then_sockets = base.zombies, base.taken_at, base.sockets
        samples = 2
    elif grace_s > 0 and (now.zombies or _to_explain(now_sockets)):
        remaining = now.taken_at + wait_s - time.monotonic()
        if remaining > 0:
            sleep(remaining)
        later_at, later_zombies = resample_zombies(now.zombies)
        if now_sockets is not None and _to_explain(now_sockets):
            later_sockets = reread_socket_census(now_sockets)
        samples = 2
        # Parents may have changed their handler, or be new (orphans re-parented).
        parents, _ = read_processes(sorted({z.ppid for z in later_zombies.values()}),
                                    now.table)
    later_by_parent = _by_parent(later_zombies)
    first = now   # the machine-wide figures below are this census's
    container_of = first.namespaces.containers.get if first.namespaces else _no_container

    findings: list[Finding] = []
    zombie_parents = []
    for ppid, zombies in later_by_parent.items():
        parent = parents.get(ppid)
        later = Snapshot(target=ppid, taken_at=later_at, processes=zombies, target_parent=parent)
        before = later if samples == 1 else Snapshot(
            target=ppid, taken_at=then_at,
            processes={pid: then_zombies[pid] for pid in zombies if pid in then_zombies},
            target_parent=parent)
        found = list(zombie_findings(before, later, grace_s, slow))
        findings += found
        zombie_parents.append(ZombieParent(
            pid=ppid, name=parent.name if parent else _name(first, ppid),
            uid=parent.uid if parent else None, sigchld=parent.sigchld if parent else None,
            zombies=len(zombies),
            persistent=len(persistent_zombies(before, later, grace_s, slow)),
            is_reaper=ppid in slow, verdict=found[0].code if found else None,
            container=container_of(ppid)))
    zombie_parents.sort(key=lambda p: (-p.zombies, p.pid))

    ranked = []   # (-ratio, -used, pid) of each process counted: rows for the top only
    for pid, used in first.fd_counts.items():
        soft, hard = first.limits[pid].get("Max open files", (None, None))
        if soft:
            ranked.append((-used / soft, -used, pid))
            if used / soft >= WARN_RATIO:   # nothing to say below
                findings += nofile_findings(pid, LimitUsage(used=used, soft=soft, hard=hard))
    nofile_rows = []
    for _, _, pid in heapq.nsmallest(TOP_NOFILE, ranked):
        used = first.fd_counts[pid]
        soft, hard = first.limits[pid]["Max open files"]
        nofile_rows.append(NofileUsage(pid=pid, name=_name(first, pid),
                                       uid=first.table[pid].uid, used=used, soft=soft or 0,
                                       hard=hard, container=container_of(pid)))

    uids = uid_tasks(first.table, first.limits)
    for row in uids:
        if not (row.enforced and row.soft_min and row.soft_min_pid):
            continue
        holder = row.soft_min_pid
        _, hard = first.limits[holder].get("Max processes", (None, None))
        usage = NprocUsage(used=row.tasks, soft=row.soft_min, hard=hard, uid=row.uid,
                           enforced=not has_cap_exemption(holder))
        uid_zombies = sum(1 for z in later_zombies.values() if z.uid == row.uid)
        findings += nproc_findings(holder, usage, uid_zombies)

    cgroups = sorted(first.pids_cgroups,
                     key=lambda c: -((c.current or 0) / c.max if c.max else 0))[:TOP_CGROUPS]
    for cg in cgroups:
        if cg.max and (cg.current or 0) / cg.max >= WARN_RATIO:
            member = cgroup_member(cg.path) if cg.path else None
            if member is not None:
                findings += pids_cgroup_findings(member, cg)

    ns = first.namespaces
    inits: dict[int, ProcessInfo] = {}
    if ns is not None:
        inits, _ = read_processes(sorted(ns.inits), first.table)
        for info in inits.values():
            findings += pid1_findings(Snapshot(target=info.pid, taken_at=first.taken_at,
                                               processes={info.pid: info}))
    containers = _container_rows(ns, first, inits, findings) if ns is not None else []

    fd_series = _fd_series(earlier, now)
    if len(fd_series) >= 3:   # RD203 needs three counts at least
        findings += fd_growth_findings(fd_series, _NofileOf(now))

    holders: list[SocketHolder] = []
    held_by: frozenset[int] = frozenset()
    unattributed = 0
    if later_sockets is not None:
        found, holders, held_by, unattributed = _descriptor_leaks(
            then_sockets if samples == 2 else None, later_sockets, now, then_at, later_at,
            recent[-1].holders if recent else frozenset())
        findings += found

    elapsed_s = round(later_at - then_at, 3)
    targets = _targets(findings, first, parents, later_by_parent, samples, grace_s, elapsed_s)
    files_open = None
    if first.file_nr:
        files_open = first.file_nr[0] - first.file_nr[1]
    machine = MachineCensus(
        processes=len(first.table), tasks=first.tasks, pid_max=first.pid_max,
        files_open=files_open, file_max=first.file_nr[2] if first.file_nr else None,
        zombie_parents=tuple(zombie_parents), nofile_top=tuple(nofile_rows[:TOP_NOFILE]),
        nofile_counted=len(first.fd_counts), nofile_unreadable=first.fds_unreadable,
        uids=tuple(uids), pids_cgroups=tuple(cgroups), samples=samples, grace_s=grace_s,
        elapsed_s=elapsed_s, socket_holders=tuple(holders), close_wait_unattributed=unattributed,
        netns_read=len(later_sockets.netns) if later_sockets else 0,
        netns_unreadable=later_sockets.unplaced if later_sockets else 0,
        containers=tuple(containers),
        pid_namespace_is_host=ns.view.proc_is_host if ns is not None else True)
    # Keep the newest sample old enough for the longest wait, and every newer one.
    keep_s = max(grace_s, PID1_GRACE_S)
    aged = [i for i, b in enumerate(recent) if later_at - b.taken_at >= keep_s]
    kept = recent[aged[-1] if aged else 0:][-MAX_BASELINES + 1:]
    state = CensusState(
        baselines=(*kept, Baseline(later_at, later_zombies, later_sockets, held_by)),
        fd_series=fd_series, cache=cache)
    return Report(targets=tuple(targets), machine=machine), state


def _to_explain(sockets: SocketCensus | None) -> bool:
    return sockets is not None and any(ns.to_explain for ns in sockets.netns)


def _fd_series(earlier: CensusState | None, now: MachineSample) -> tuple[FdCounts, ...]:
    """The descriptor counts of the last FD_HISTORY censuses, this one
    included, of the processes that are still there."""
    if earlier is None:
        return (FdCounts(now.taken_at, now.fd_counts),)
    series = [*earlier.fd_series, FdCounts(now.taken_at, now.fd_counts)]
    alive = now.table
    return tuple(s if not s.counts.keys() - alive.keys() else   # none gone: kept as it is
                 FdCounts(s.taken_at, {pid: n for pid, n in s.counts.items() if pid in alive})
                 for s in series[-FD_HISTORY:])


class _NofileOf(Mapping[int, LimitUsage]):
    """Each counted process's descriptors against its ulimit -n, made when
    looked up (RD203 looks up the few that grow)."""

    def __init__(self, sample: MachineSample) -> None:
        self.sample = sample

    def __getitem__(self, pid: int) -> LimitUsage:
        soft = self.sample.limits[pid].get("Max open files", (None, None))[0]
        return LimitUsage(used=self.sample.fd_counts[pid], soft=soft, hard=None)

    def __iter__(self) -> Iterator[int]:
        return iter(self.sample.fd_counts)

    def __len__(self) -> int:
        return len(self.sample.fd_counts)


def _descriptor_leaks(then: SocketCensus | None, later: SocketCensus,
                      sample: MachineSample, then_at: float, later_at: float,
                      hint: frozenset[int]) -> tuple[list[Finding], list[SocketHolder],
                                                     frozenset[int], int]:
    """RD201 and RD401 by the rules of `scan PID`, for the processes that
    hold what a network namespace has to explain. With `then` (two
    samples) only what was there in both counts: the same CLOSE_WAIT
    socket, a listener whose queue was never empty. `hint`: the processes
    that held such sockets last time, searched first. Also returns the
    processes found holding them, and how many of the CLOSE_WAIT sockets
    had no holder that could be read (another user's, without the
    capabilities to list and read its descriptors)."""
    forking = frozenset(b.ppid for b in sample.table.values())
    all_held: set[int] = set()
    findings: list[Finding] = []
    rows: list[SocketHolder] = []
    unattributed = 0
    for ns in later.netns:
        wanted = ns.to_explain
        before = then.get(ns.key) if then is not None else None
        if then is not None:
            if before is None:
                continue
            wanted = frozenset(i for i in wanted if i in before.close_wait
                               or (i in before.listeners and before.listeners[i].rx_queue))
        if not wanted:
            continue
        held = find_holders(ns, wanted, sample.table, {ns.owners[i] for i in wanted}, hint,
                            sample.fd_counts)
        all_held.update(held)
        placed = {i for inodes in held.values() for i in inodes}
        unattributed += sum(1 for i in wanted if i in ns.close_wait and i not in placed)
        infos, _ = read_processes(sorted(held), sample.table)
        held = {pid: inodes for pid, inodes in held.items() if pid in infos}
        later_snap = Snapshot(target=0, taken_at=later_at, processes=infos,
                              fds=holder_tables(ns, held))
        earlier_snap = later_snap if before is None else Snapshot(
            target=0, taken_at=then_at, processes=infos, fds=holder_tables(before, held))
        found = [*close_wait_findings(earlier_snap, later_snap, forking),
                 *accept_backlog_findings(earlier_snap, later_snap)]
        findings += found
        for pid, inodes in sorted(held.items()):
            cw = sum(1 for i in inodes if i in wanted and i in ns.close_wait)
            queues = tuple(ListenerQueue(port=s.local[1], queue=s.rx_queue, backlog=s.backlog)
                           for i in inodes if i in wanted and (s := ns.listeners.get(i)))
            if cw or queues:
                rows.append(SocketHolder(
                    pid=pid, name=infos[pid].name, uid=infos[pid].uid, close_wait=cw,
                    listeners=queues,
                    verdicts=tuple(sorted({f.code for f in found if f.pid == pid})),
                    container=infos[pid].container))
    rows.sort(key=lambda h: (not h.verdicts, -h.close_wait,
                             -sum(q.queue for q in h.listeners), h.pid))
    return findings, rows, frozenset(all_held), unattributed


def _container_rows(ns: MachineNamespaces, sample: MachineSample,
                    inits: dict[int, ProcessInfo], findings: list[Finding]) -> list[ContainerRow]:
    """One row per PID namespace below the host's (by its PID 1), and one per
    known container that has no PID namespace of its own."""
    verdicts: dict[int, set[str]] = {}
    for f in findings:
        if f.code in ("RD104", "RD105"):
            verdicts.setdefault(f.pid, set()).add(f.code)
    # Inside a container's /proc every process is in PID 1's namespace.
    whole = not ns.view.proc_is_host
    rows = []
    in_a_namespace: set[int] = set()
    for pid, inode in sorted(ns.inits.items()):
        members = (list(sample.table) if whole
                   else [p for p, i in ns.members.items() if inode is not None and i == inode])
        in_a_namespace.update(members)
        info = inits.get(pid)
        brief = sample.table.get(pid)
        name = info.name if info else (brief.name if brief else None)
        rows.append(_row(ns.containers.get(pid), inode, pid, name, info, members, sample,
                         tuple(sorted(verdicts.get(pid, ())))))
    by_container: dict[Container, list[int]] = {}
    for pid, container in ns.containers.items():
        if pid not in in_a_namespace:
            by_container.setdefault(container, []).append(pid)
    for container, members in sorted(by_container.items(), key=lambda kv: kv[0].id):
        rows.append(_row(container, None, None, None, None, members, sample, ()))
    rows.sort(key=lambda r: (-len(r.verdict), r.init_pid or 0))
    return rows


def _row(container: Container | None, inode: int | None, init_pid: int | None,
         name: str | None, info: ProcessInfo | None, members: list[int],
         sample: MachineSample, verdict: tuple[str, ...]) -> ContainerRow:
    zombies = sum(1 for p in members if p in sample.table and sample.table[p].state == "Z")
    return ContainerRow(
        container=container, pid_ns=inode, init_pid=init_pid, init_name=name,
        init_cmdline=info.cmdline if info else None, init_is_known=is_known_init(name),
        init_sigterm=info.sigterm if info else None,
        processes=len(members) - zombies, zombies=zombies, verdict=verdict)


def _no_container(pid: int) -> Container | None:
    return None


def _by_parent(zombies: dict[int, ProcessInfo]) -> dict[int, dict[int, ProcessInfo]]:
    groups: dict[int, dict[int, ProcessInfo]] = {}
    for pid, z in sorted(zombies.items()):
        groups.setdefault(z.ppid, {})[pid] = z
    return groups


def _name(sample: MachineSample, pid: int) -> str | None:
    brief = sample.table.get(pid)
    return brief.name if brief else None


def _targets(findings: list[Finding], sample: MachineSample,
             parents: dict[int, ProcessInfo], zombies_by_parent: dict[int, dict[int, ProcessInfo]],
             samples: int, grace_s: float, elapsed_s: float) -> list[TargetReport]:
    by_pid: dict[int, list[Finding]] = {}
    for f in findings:
        by_pid.setdefault(f.pid, []).append(f)
    missing = [pid for pid in by_pid if pid not in parents]
    infos = {**parents, **read_processes(missing, sample.table)[0]}
    ranked = sorted(by_pid, key=lambda pid: (-max(f.severity.rank for f in by_pid[pid]), pid))
    targets = []
    for pid in ranked:
        info = infos.get(pid)
        if info is None:
            continue  # gone since: nothing left to fix
        snap = collect_census_target(info, zombies_by_parent.get(pid, {}), sample)
        found = sorted(by_pid[pid], key=lambda f: f.code)
        targets.append(TargetReport(pid=pid, snapshot=snap, findings=tuple(found),
                                    samples=samples, grace_s=grace_s,
                                    elapsed_s=elapsed_s))
    targets.sort(key=lambda t: t.pid)
    return targets


__all__ = ["census", "Severity"]
