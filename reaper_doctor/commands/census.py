"""`scan` with no PID: the whole machine.

Every parent that holds zombies (with the same persistence check and
verdicts as `scan PID`), the orphans waiting on PID 1 or a subreaper, the
processes nearest their ulimit -n, each UID's tasks against ulimit -u, the
pids cgroups nearest pids.max, and the system-wide file and PID tables.

collect/machine.py reads, diagnose/ judges (the same zombie_findings /
limit_findings as `scan PID`), the renderers print.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from ..collect.cgroups import cgroup_member
from ..collect.machine import (
    MachineSample,
    collect_census_target,
    collect_machine,
    read_processes,
    resample_zombies,
)
from ..collect.namespaces import MachineNamespaces
from ..collect.process import has_cap_exemption
from ..diagnose.containers import pid1_findings
from ..diagnose.limits import WARN_RATIO, limit_findings
from ..diagnose.zombies import PID1_GRACE_S, persistent_zombies, zombie_findings
from ..model import (
    Container,
    ContainerRow,
    Finding,
    LimitUsage,
    MachineCensus,
    NofileUsage,
    NprocUsage,
    ProcessInfo,
    Report,
    Severity,
    Snapshot,
    TargetReport,
    UidTasks,
    ZombieParent,
)
from ..parse.containers import is_known_init

TOP_NOFILE = 10
TOP_CGROUPS = 5
# Parents known to reap orphans for a living (they are PID 1 or subreapers):
# their zombies come and go, so they get PID 1's longer grace (linux-facts 8).
INIT_LIKE = frozenset({
    "systemd", "init", "tini", "dumb-init", "catatonit", "docker-init", "s6-svscan",
    "runsvdir", "containerd-shim", "containerd-shim-runc-v2", "conmon",
})


def census(*, grace_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> Report:
    """Sample the machine; with grace_s > 0 re-read its zombies `grace_s`
    later (PID1_GRACE_S when PID 1 or a subreaper holds some) and judge
    persistence by (PID, start time), as `scan PID` does."""
    first = collect_machine(fd_top=TOP_NOFILE, fd_floor=WARN_RATIO)
    first_by_parent = _by_parent(first.zombies)
    parents, parent_sessions = read_processes(sorted(first_by_parent), first.table)
    slow = _reapers(first_by_parent, parents, parent_sessions, first.sessions)
    later_zombies, later_at, samples = first.zombies, first.taken_at, 1
    if grace_s > 0 and first.zombies:
        wait_s = grace_s
        if slow & set(first_by_parent):
            wait_s = max(wait_s, PID1_GRACE_S)
        remaining = first.taken_at + wait_s - time.monotonic()
        if remaining > 0:
            sleep(remaining)
        later_at, later_zombies = resample_zombies(first.zombies)
        samples = 2
        # Parents may have changed their handler, or be new (orphans re-parented).
        parents, _ = read_processes(sorted({z.ppid for z in later_zombies.values()}),
                                            first.table)
    later_by_parent = _by_parent(later_zombies)

    findings: list[Finding] = []
    zombie_parents = []
    for ppid, zombies in later_by_parent.items():
        parent = parents.get(ppid)
        later = Snapshot(target=ppid, taken_at=later_at, processes=zombies, target_parent=parent)
        earlier = later if samples == 1 else Snapshot(
            target=ppid, taken_at=first.taken_at,
            processes={pid: first.zombies[pid] for pid in zombies if pid in first.zombies},
            target_parent=parent)
        found = list(zombie_findings(earlier, later, grace_s, slow))
        findings += found
        zombie_parents.append(ZombieParent(
            pid=ppid, name=parent.name if parent else _name(first, ppid),
            uid=parent.uid if parent else None, sigchld=parent.sigchld if parent else None,
            zombies=len(zombies),
            persistent=len(persistent_zombies(earlier, later, grace_s, slow)),
            is_reaper=ppid in slow, verdict=found[0].code if found else None))
    zombie_parents.sort(key=lambda p: (-p.zombies, p.pid))

    nofile_rows = []
    for pid, used in first.fd_counts.items():
        soft, hard = first.limits[pid].get("Max open files", (None, None))
        if soft:
            nofile_rows.append(NofileUsage(pid=pid, name=_name(first, pid),
                                           uid=first.table[pid].uid, used=used, soft=soft,
                                           hard=hard))
            findings += limit_findings(Snapshot(
                target=pid, taken_at=first.taken_at, processes={},
                nofile={pid: LimitUsage(used=used, soft=soft, hard=hard)}))
    nofile_rows.sort(key=lambda r: (-r.ratio, -r.used, r.pid))

    uids = _uid_tasks(first)
    for row in uids:
        if not (row.enforced and row.soft_min and row.soft_min_pid):
            continue
        holder = row.soft_min_pid
        _, hard = first.limits[holder].get("Max processes", (None, None))
        usage = NprocUsage(used=row.tasks, soft=row.soft_min, hard=hard, uid=row.uid,
                           enforced=not has_cap_exemption(holder))
        uid_zombies = {p: z for p, z in later_zombies.items() if z.uid == row.uid}
        findings += limit_findings(Snapshot(target=holder, taken_at=first.taken_at,
                                            processes=uid_zombies, nproc=usage))

    cgroups = sorted(first.pids_cgroups,
                     key=lambda c: -((c.current or 0) / c.max if c.max else 0))[:TOP_CGROUPS]
    for cg in cgroups:
        if cg.max and (cg.current or 0) / cg.max >= WARN_RATIO:
            member = cgroup_member(cg.path) if cg.path else None
            if member is not None:
                findings += limit_findings(Snapshot(target=member, taken_at=first.taken_at,
                                                    processes={}, pids_cgroup=cg))

    ns = first.namespaces
    inits: dict[int, ProcessInfo] = {}
    if ns is not None:
        inits, _ = read_processes(sorted(ns.inits), first.table)
        for info in inits.values():
            findings += pid1_findings(Snapshot(target=info.pid, taken_at=first.taken_at,
                                               processes={info.pid: info}))
    containers = _container_rows(ns, first, inits, findings) if ns is not None else []

    elapsed_s = round(later_at - first.taken_at, 3)
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
        elapsed_s=elapsed_s, containers=tuple(containers),
        pid_namespace_is_host=ns.view.proc_is_host if ns is not None else True)
    return Report(targets=tuple(targets), machine=machine)


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


def _by_parent(zombies: dict[int, ProcessInfo]) -> dict[int, dict[int, ProcessInfo]]:
    groups: dict[int, dict[int, ProcessInfo]] = {}
    for pid, z in sorted(zombies.items()):
        groups.setdefault(z.ppid, {})[pid] = z
    return groups


def _name(sample: MachineSample, pid: int) -> str | None:
    brief = sample.table.get(pid)
    return brief.name if brief else None


def _reapers(by_parent: dict[int, dict[int, ProcessInfo]], parents: dict[int, ProcessInfo],
             parent_sessions: dict[int, int], zombie_sessions: dict[int, int]) -> set[int]:
    """PID 1 and the parents that look like subreapers: /proc does not show
    the subreaper flag (linux-facts 8), so infer it from a known init-like
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


def _uid_tasks(sample: MachineSample) -> list[UidTasks]:
    """Tasks per real UID, against the most common soft RLIMIT_NPROC of its
    processes (and the lowest, which fails first)."""
    tasks: Counter[int] = Counter()
    processes: Counter[int] = Counter()
    limits: dict[int, list[tuple[int | None, int | None, int, int]]] = {}
    for pid, brief in sample.table.items():
        if brief.uid is None:
            continue
        tasks[brief.uid] += brief.threads
        processes[brief.uid] += 1
        lim = sample.limits.get(pid)
        if lim and "Max processes" in lim:
            soft, hard = lim["Max processes"]
            limits.setdefault(brief.uid, []).append((soft, hard, -brief.threads, pid))
    rows = []
    for uid, count in tasks.items():
        held = limits.get(uid, [])
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
