"""`scan --json`: the stable document of docs/json.md (schema reaper-doctor/scan/1)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

from ..diagnose.coverage import coverage
from ..diagnose.zombies import exit_status_describer
from ..model import (
    Container,
    FdTable,
    Finding,
    MachineCensus,
    ProcessInfo,
    Report,
    Snapshot,
    TargetReport,
)
from ..parse.procfs import STATE_NAMES
from .common import OWN_NAMESPACE_NOTE, address_text, children_map, state_word, zombie_groups

SCHEMA = "reaper-doctor/scan/1"


# Indented output goes through json's pure-Python encoder (about 25 us per
# tree node); big documents are written compact by the C encoder instead.
INDENT_MAX_PROCESSES = 1000


def render_json(report: Report) -> str:
    doc = report_document(report)
    size = sum(len(t.snapshot.processes) for t in report.targets)
    # The tree nests as deep as the processes do (a chain of forks), and
    # json's encoders recurse per nested object and list, two per level:
    # past ~490 levels Python's default limit of 1,000 calls stops them. A
    # tree has at most as many levels as parents. The room is capped where
    # the C encoder was checked on an 8 MB stack (20,000 levels).
    levels = max((len(t.snapshot.parent_pids) for t in report.targets), default=0)
    with _recursion_room(min(4 * levels + 200, 80_000)):
        if size > INDENT_MAX_PROCESSES:
            return json.dumps(doc, separators=(",", ":")) + "\n"
        return json.dumps(doc, indent=2) + "\n"


@contextmanager
def _recursion_room(calls: int) -> Iterator[None]:
    old = sys.getrecursionlimit()
    if calls > old:
        sys.setrecursionlimit(calls)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def report_document(report: Report) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema": SCHEMA,
                           "targets": [target_document(t) for t in report.targets]}
    if report.machine is not None:
        doc["machine"] = machine_document(report.machine)
    if report.duration_s is not None:
        doc["duration_s"] = round(report.duration_s, 4)
    if report.notes:
        doc["notes"] = list(report.notes)
    return doc


def machine_document(m: MachineCensus) -> dict[str, Any]:
    """The `machine` section of `scan` with no PID."""
    return {
        "processes": m.processes,
        "tasks": {"used": m.tasks, "pid_max": m.pid_max},
        "files": {"open": m.files_open, "file_max": m.file_max},
        "zombie_parents": [
            {"pid": p.pid, "name": p.name, "uid": p.uid, "sigchld": p.sigchld,
             "zombies": p.zombies, "persistent": p.persistent, "is_reaper": p.is_reaper,
             "verdict": p.verdict, "container": _container(p.container)}
            for p in m.zombie_parents if not p.is_reaper],
        "orphaned_zombies": [
            {"reaper_pid": p.pid, "name": p.name, "zombies": p.zombies,
             "persistent": p.persistent, "verdict": p.verdict,
             "container": _container(p.container)}
            for p in m.zombie_parents if p.is_reaper],
        "nofile_top": [{"pid": r.pid, "name": r.name, "uid": r.uid, "used": r.used,
                        "soft": r.soft, "hard": r.hard, "ratio": round(r.ratio, 4),
                        "container": _container(r.container)}
                       for r in m.nofile_top],
        "nofile_counted": m.nofile_counted, "nofile_unreadable": m.nofile_unreadable,
        "nproc_by_uid": [
            {"uid": u.uid, "tasks": u.tasks, "processes": u.processes, "soft": u.soft,
             "hard": u.hard, "soft_basis": "most common soft limit among the UID's processes",
             "soft_min": u.soft_min, "soft_min_pid": u.soft_min_pid, "enforced": u.enforced,
             "ratio": None if u.ratio is None else round(u.ratio, 4)}
            for u in m.uids],
        "pids_cgroups": [{"path": c.path, "current": c.current, "max": c.max,
                          "refusals": c.refusals} for c in m.pids_cgroups],
        "descriptor_leaks": [
            {"pid": h.pid, "name": h.name, "uid": h.uid, "close_wait": h.close_wait,
             "listeners": [{"port": q.port, "queue": q.queue, "backlog": q.backlog}
                           for q in h.listeners],
             "verdicts": list(h.verdicts), "container": _container(h.container)}
            for h in m.socket_holders],
        "netns_read": m.netns_read, "netns_unreadable": m.netns_unreadable,
        "close_wait_unattributed": m.close_wait_unattributed,
        "samples": m.samples, "grace_s": m.grace_s, "elapsed_s": m.elapsed_s,
        "pid_namespace": {"is_host": m.pid_namespace_is_host,
                          "note": None if m.pid_namespace_is_host else OWN_NAMESPACE_NOTE},
        "containers": [
            {"container": _container(r.container),
             "pid_ns": r.pid_ns,
             "init": None if r.init_pid is None else {
                 "pid": r.init_pid, "name": r.init_name,
                 "cmdline": list(r.init_cmdline) if r.init_cmdline else None,
                 "known_init": r.init_is_known, "sigterm": r.init_sigterm},
             "processes": r.processes, "zombies": r.zombies, "verdict": list(r.verdict)}
            for r in m.containers],
    }


def finding_document(f: Finding) -> dict[str, Any]:
    return {"code": f.code, "slug": f.slug, "severity": f.severity.value, "pid": f.pid,
            "message": f.message, "evidence": dict(f.evidence)}


def target_document(t: TargetReport) -> dict[str, Any]:
    snap = t.snapshot
    me = snap.processes[t.pid]
    fds = snap.fds.get(t.pid)
    nofile = snap.nofile.get(t.pid)
    groups = zombie_groups(snap)
    doc: dict[str, Any] = {
        "pid": me.pid, "name": me.name, "cmdline": list(me.cmdline) if me.cmdline else [],
        "ppid": me.ppid, "uid": me.uid, "state": state_word(me), "threads": me.threads,
        "kernel_thread": me.is_kernel_thread,
        "age_s": _round(me.age_s), "sigchld": me.sigchld,
        **namespace_document(me),
        "tree": tree_document(snap),
        "zombies": {
            "count": sum(g.count for g in groups),   # every zombie is in one group
            "by_parent": [{"ppid": g.ppid, "parent": g.parent_name, "sigchld": g.sigchld,
                           "count": g.count, "pids": list(g.pids),
                           "exit_statuses": g.exit_statuses} for g in groups],
        },
        "fds": fds_document(fds),
        "limits": {
            # used null: unreadable (the report says so in `incomplete`)
            "nofile": _usage(nofile),
            "nproc": ({**(_usage(snap.nproc) or {}), "uid": snap.nproc.uid,
                       "enforced": snap.nproc.enforced} if snap.nproc else None),
            "pids_cgroup": (snap.pids_cgroup._asdict() if snap.pids_cgroup else None),
            "pid_max": {"used": snap.pids_in_use, "max": snap.pid_max},
        },
        "findings": [finding_document(f) for f in t.findings],
        "unreadable": [u._asdict() for u in snap.unreadable],
        "incomplete": _coverage_document(snap),
        "close_wait_of_uid": ({"uid": me.uid, "by_port": {str(port): n for port, n in
                                                          snap.close_wait_of_uid.items()}}
                              if snap.close_wait_of_uid else None),
        "samples": t.samples, "grace_s": t.grace_s, "elapsed_s": round(t.elapsed_s, 3),
        "gone": t.gone,
    }
    return doc


def _coverage_document(snap: Snapshot) -> dict[str, Any] | None:
    """What the scan could not read and what went unchecked; None: complete."""
    gaps = coverage(snap)
    if gaps is None:
        return None
    return {"missing": list(gaps.missing), "unchecked": list(gaps.unchecked),
            "to_complete": gaps.to_complete}


def fds_document(fds: FdTable | None) -> dict[str, Any] | None:
    if fds is None:
        return None
    doc: dict[str, Any] = {
        "open": fds.open, "by_kind": dict(sorted(fds.by_kind.items(), key=lambda kv: -kv[1])),
        "close_wait": fds.close_wait,
        # Sockets in no socket table (invisible to ss); `closed_tcp` of
        # them are TCP (shut down but never closed) or of unknown protocol.
        "unlisted_sockets": len(fds.unlisted_socket_fds),
        "closed_tcp": len(fds.closed_tcp),
        "tcp_states": dict(Counter(s.state for s in fds.sockets
                                   if s.proto.startswith("tcp")).most_common()),
        "listening": [{"fd": s.fd, "address": address_text(s.local), "proto": s.proto,
                       "accept_queue": s.rx_queue, "backlog": s.backlog}
                      for s in fds.listeners],
        "top_paths": [{"path": p, "count": n} for p, n in fds.top_paths],
    }
    if fds.listed:
        doc["list"] = [{"fd": fd, "target": link} for fd, link in fds.listed]
        doc["sockets"] = [{"fd": s.fd, "inode": s.inode, "proto": s.proto,
                           "local": address_text(s.local), "remote": address_text(s.remote),
                           "state": s.state, "rx_queue": s.rx_queue, "tx_queue": s.tx_queue}
                          for s in fds.sockets]
    return doc


def tree_document(snap: Snapshot) -> dict[str, Any]:
    """The target's node: each node holds its children, in PID order.

    Two flat passes, not a call per process (a tree may hold 10,000
    zombies): a node for every process, then each hung under its parent.
    A process whose parent is not in the tree hangs nowhere.
    """
    describe = exit_status_describer()
    nodes: dict[int, dict[str, Any]] = {}
    for info in snap.processes.values():
        node: dict[str, Any] = {"pid": info.pid, "name": info.name,
                                "state": STATE_NAMES.get(info.state, info.state),  # state_word()
                                "num_fds": info.num_fds}
        if info.is_zombie and info.exit_status:
            node["exit_status"] = describe(info.exit_status)
        if info.sigchld is not None:
            node["sigchld"] = info.sigchld
        # Only where they tell something: a PID inside a namespace below
        # ours, a namespace's PID 1 and its container.
        if info.ns_pid is not None and info.ns_pid != info.pid:
            node["ns_pid"] = info.ns_pid
        if info.is_ns_init:
            node["is_ns_init"] = True
            if info.container is not None:
                node["container"] = container_document(info.container)
        node["children"] = []
        nodes[info.pid] = node
    for ppid, children in children_map(snap).items():
        parent = nodes.get(ppid)
        if parent is not None:
            parent["children"] = [nodes[c.pid] for c in children]
    return nodes[snap.target]


def namespace_document(info: ProcessInfo) -> dict[str, Any]:
    """PID namespace and container of a process: its namespace's inode, its
    PID there, whether it is that namespace's PID 1 (and then how it takes
    SIGTERM), and the container (None: none known)."""
    c = info.container
    doc: dict[str, Any] = {
        "pid_ns": info.pid_ns, "ns_pid": info.ns_pid, "is_ns_init": info.is_ns_init,
        "container": _container(c)}
    if info.is_ns_init:
        doc["sigterm"] = info.sigterm
    return doc


def container_document(c: Container) -> dict[str, Any]:
    return {"runtime": c.runtime, "id": c.id, "short_id": c.short_id, "pod": c.pod}


def _container(c: Container | None) -> dict[str, Any] | None:
    return container_document(c) if c is not None else None


def _usage(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"used": usage.used, "soft": usage.soft, "hard": usage.hard}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
