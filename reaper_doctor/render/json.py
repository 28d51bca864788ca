"""`scan --json`: the stable document of DESIGN.md (schema reaper-doctor/scan/1)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any

from ..model import Finding, FdTable, ProcessInfo, Report, Snapshot, TargetReport
from .common import children_map, state_word, zombie_groups

SCHEMA = "reaper-doctor/scan/1"


def render_json(report: Report) -> str:
    return json.dumps(report_document(report), indent=2) + "\n"


def report_document(report: Report) -> dict[str, Any]:
    return {"schema": SCHEMA, "targets": [target_document(t) for t in report.targets]}


def finding_document(f: Finding) -> dict[str, Any]:
    return {"code": f.code, "slug": f.slug, "severity": f.severity.value, "pid": f.pid,
            "message": f.message, "evidence": dict(f.evidence)}


def target_document(t: TargetReport) -> dict[str, Any]:
    snap = t.snapshot
    me = snap.processes[t.pid]
    fds = snap.fds.get(t.pid)
    nofile = snap.nofile.get(t.pid)
    doc: dict[str, Any] = {
        "pid": me.pid, "name": me.name, "cmdline": list(me.cmdline) if me.cmdline else [],
        "ppid": me.ppid, "uid": me.uid, "state": state_word(me), "threads": me.threads,
        "age_s": _round(me.age_s), "sigchld": me.sigchld,
        "tree": tree_document(snap),
        "zombies": {
            "count": len(snap.zombies),
            "by_parent": [{"ppid": g.ppid, "parent": g.parent_name, "sigchld": g.sigchld,
                           "count": g.count, "pids": list(g.pids),
                           "exit_statuses": g.exit_statuses} for g in zombie_groups(snap)],
        },
        "fds": fds_document(fds),
        "limits": {
            "nofile": _usage(nofile),
            "nproc": ({**_usage(snap.nproc), "uid": snap.nproc.uid,
                       "enforced": snap.nproc.enforced} if snap.nproc else None),
            "pids_cgroup": (asdict(snap.pids_cgroup) if snap.pids_cgroup else None),
            "pid_max": {"used": snap.pids_in_use, "max": snap.pid_max},
        },
        "findings": [finding_document(f) for f in t.findings],
        "unreadable": [asdict(u) for u in snap.unreadable],
        "samples": t.samples, "grace_s": t.grace_s, "gone": t.gone,
    }
    return doc


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
        "listening": [{"fd": s.fd, "address": _addr(s.local), "proto": s.proto,
                       "accept_queue": s.rx_queue, "backlog": s.backlog}
                      for s in fds.listeners],
        "top_paths": [{"path": p, "count": n} for p, n in fds.top_paths],
    }
    if fds.listed:
        doc["list"] = [{"fd": fd, "target": link} for fd, link in fds.listed]
        doc["sockets"] = [{"fd": s.fd, "inode": s.inode, "proto": s.proto,
                           "local": _addr(s.local), "remote": _addr(s.remote),
                           "state": s.state, "rx_queue": s.rx_queue, "tx_queue": s.tx_queue}
                          for s in fds.sockets]
    return doc


def _addr(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tree_document(snap: Snapshot) -> dict[str, Any]:
    kids = children_map(snap)

    def node(info: ProcessInfo) -> dict[str, Any]:
        doc: dict[str, Any] = {"pid": info.pid, "name": info.name, "state": state_word(info),
                               "num_fds": info.num_fds}
        if info.is_zombie and info.exit_status:
            doc["exit_status"] = info.exit_status.describe()
        if info.sigchld is not None:
            doc["sigchld"] = info.sigchld
        doc["children"] = [node(c) for c in kids.get(info.pid, ())]
        return doc

    return node(snap.processes[snap.target])


def _usage(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"used": usage.used, "soft": usage.soft, "hard": usage.hard}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
