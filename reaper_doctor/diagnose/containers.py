"""Containers' PID 1: RD104 (it does not reap the orphans that come to it)
and RD105 (it drops SIGTERM). A namespace's PID 1 is judged by what it
is, not by its SIGCHLD handling: the fix is an init."""

from __future__ import annotations

from typing import Iterable

from ..model import Finding, ProcessInfo, Snapshot, describe_place
from .findings import finding


def namespace_inits(snap: Snapshot) -> set[int]:
    """The processes of `snap` that are PID 1 of a PID namespace below the
    host's: every orphan of their namespace comes to them."""
    inits = {p.pid for p in snap.processes.values() if p.is_ns_init}
    if snap.target_parent is not None and snap.target_parent.is_ns_init:
        inits.add(snap.target_parent.pid)
    return inits


def init_not_reaping(init: ProcessInfo, seen: str, evidence: dict[str, object]) -> Finding:
    """RD104: the fix is an init, not the parent's SIGCHLD handling."""
    command = " ".join(init.cmdline) if init.cmdline else init.name
    where = describe_place(True, init.container)
    return finding("RD104", init.pid,
                   f"{seen}; it is {where} (command: {_clip(command)}), and every orphan of "
                   "the namespace comes to it, but it does not reap them: run an init as "
                   "PID 1 (docker run --init, podman run --init, tini or dumb-init as "
                   "ENTRYPOINT; Kubernetes: shareProcessNamespace: true), or make the program "
                   "reap with os.waitpid(-1, os.WNOHANG) in a loop",
                   **evidence, **_namespace_evidence(init))


def pid1_findings(snap: Snapshot) -> Iterable[Finding]:
    """RD105: PID 1 of a namespace that neither catches nor blocks SIGTERM
    (nor waits for it in sigtimedwait). Judged by the masks, not by the
    name: an init may run under another one (podman-init)."""
    for p in sorted(snap.processes.values(), key=lambda p: p.pid):
        if not (p.is_ns_init and p.sigterm in ("default", "ignored")):
            continue
        command = " ".join(p.cmdline) if p.cmdline else p.name
        handling = "ignores SIGTERM" if p.sigterm == "ignored" else "has no SIGTERM handler"
        yield finding(
            "RD105", p.pid,
            f"PID {p.pid} ({p.name}) is {describe_place(True, p.container)}, and {handling} "
            f"(command: {_clip(command)}): the kernel drops a SIGTERM sent to it from "
            "outside, so docker stop, podman stop or kubectl delete waits out its grace period "
            "and then kills; run an init that forwards signals (--init, tini), or handle "
            "SIGTERM in the program", **_namespace_evidence(p))


def _namespace_evidence(p: ProcessInfo) -> dict[str, object]:
    c = p.container
    return dict(ns_pid=p.ns_pid, pid_ns=p.pid_ns, sigterm=p.sigterm or "unknown",
                command=list(p.cmdline) if p.cmdline else None,
                container=c._asdict() if c else None)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
