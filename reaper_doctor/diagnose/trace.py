"""Signal-count rules: what SIGCHLD tracepoint counts say about the zombies."""

from __future__ import annotations

import signal
from typing import (
    TYPE_CHECKING,
    Iterable,
    Mapping,
    Protocol,
)

from ..model import (
    Finding,
)
from .findings import finding

if TYPE_CHECKING:
    from ..model.trace import TraceResult

class SignalTally(Protocol):
    """What these functions read of tracefs.SignalCounts (no tracefs import here)."""

    @property
    def generated(self) -> int: ...
    @property
    def merged(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def ignored(self) -> int: ...


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def zombies_left_text(persisting: int, left: int, grace_s: float) -> str:
    """"107 zombies left for 1 s or more (137 in all)": the zombies that count
    (older than the grace), labelled apart from all of them when they differ."""
    noun = "zombie" if persisting == 1 else "zombies"
    if persisting == left:
        return f"{left} {noun} left"
    return f"{persisting} {noun} left for {grace_s:g} s or more ({left} in all)"


def sigchld_findings(pid: int, counts: SignalTally, *, disposition: str | None,
                     zombies_persisting: int, zombies_left: int,
                     children_exited: int, grace_s: float = 1.0) -> list[Finding]:
    """Findings of a SIGCHLD trace of `pid`: RD101/RD102/RD103 when zombies
    persist (`zombies_persisting` of the `zombies_left`, older than `grace_s`)."""
    if zombies_persisting == 0:
        return []
    c = counts
    z = zombies_left_text(zombies_persisting, zombies_left, grace_s)
    evidence = {"generated": c.generated, "merged": c.merged, "delivered": c.delivered,
                "ignored": c.ignored, "children_exited": children_exited,
                "zombies_left": zombies_left, "zombies_persisting": zombies_persisting,
                "sigchld": disposition}
    if disposition == "blocked":
        return [finding("RD103", pid, f"SIGCHLD is blocked: {c.generated} sent, "
                        f"{c.delivered} delivered; {z}", **evidence)]
    if disposition == "caught" or c.delivered > 0:
        return [finding("RD102", pid, f"{c.merged} of {c.generated} SIGCHLD merged; "
                        f"the handler ran {_times(c.delivered)}; {z}: the "
                        "handler reaps one child per signal; loop waitpid(-1, WNOHANG)",
                        **evidence)]
    if disposition == "default":
        return [finding("RD101", pid, f"SIGCHLD is not caught and nobody calls waitpid: "
                        f"{z}", **evidence)]
    return []


def measured_sigchld_text(m: Mapping[str, float]) -> str:
    """"measured: 53 of 64 SIGCHLD merged, 11 delivered in 2.0 s" from `scan --trace` counts."""
    generated, merged, delivered = (int(m.get(k, 0)) for k in ("generated", "merged",
                                                                 "delivered"))
    during = f" in {m['duration_s']:.1f} s" if "duration_s" in m else ""
    if generated == 0:
        text = f"measured: no SIGCHLD sent{during} (no child exited while traced)"
    else:
        text = (f"measured: {merged} of {generated} SIGCHLD merged, "
                f"{delivered} delivered{during}")
    if m.get("lost_events"):
        text += f" (the ring buffer dropped {int(m['lost_events'])} events: counts are low)"
    return text


def with_measured_sigchld(findings: Iterable[Finding],
                          measured: Mapping[int, Mapping[str, float]]) -> list[Finding]:
    """`findings`, each RD102 of a parent in `measured` ({pid: {"generated",
    "merged", "delivered", ...}} from `scan --trace`) with those counts added
    to its evidence (`measured`) and its message."""
    out = []
    for f in findings:
        m = measured.get(f.pid)
        if f.code == "RD102" and m is not None:
            f = f._replace(message=f"{f.message}; {measured_sigchld_text(m)}",
                           evidence={**f.evidence, "measured": dict(m)})
        out.append(f)
    return out


def trace_findings(r: TraceResult) -> list[Finding]:
    """Findings of a SIGCHLD trace: RD101/RD102/RD103 when zombies persist
    (judged by `sigchld_findings`)."""
    if r.signum != signal.SIGCHLD:
        return []
    return sigchld_findings(r.pid, r.counts, disposition=r.disposition,
                            zombies_persisting=r.zombies_persisting,
                            zombies_left=r.zombies_left, children_exited=r.children_exited,
                            grace_s=r.grace_s)


def trace_verdict(r: TraceResult) -> str:
    """One line saying what the numbers mean."""
    c, name = r.counts, r.signal
    gone = f"PID {r.pid} exited during the trace; " if r.ended == "target-exited" else ""
    lost = (f" (the ring buffer dropped {c.lost_events} events: counts are low)"
            if c.lost_events else "")
    if c.generated == 0 and c.delivered == 0:
        what = " (no child exited, stopped or continued)" if r.signum == signal.SIGCHLD else ""
        return f"{gone}no {name} was sent to PID {r.pid} in {r.duration_s:.1f} s{what}{lost}"
    if r.signum != signal.SIGCHLD:
        return (f"{gone}{c.generated} {name} sent, {c.merged} merged into one already pending, "
                f"{c.ignored} ignored, {c.delivered} delivered{lost}")
    found = trace_findings(r)
    if found:
        code = found[0].code
        z = zombies_left_text(r.zombies_persisting, r.zombies_left, r.grace_s)
        if code == "RD102":
            body = (f"{c.merged} of {c.generated} SIGCHLD merged; the handler ran "
                    f"{_times(c.delivered)}; {z}: a wait-once handler")
        elif code == "RD103":
            body = (f"{c.generated} SIGCHLD sent while blocked, {c.merged} merged, "
                    f"{c.delivered} delivered; {z}: SIGCHLD blocked, never waited")
        else:
            body = (f"{c.generated} SIGCHLD sent and {c.ignored} discarded (no handler); "
                    f"{z}: nobody calls waitpid")
        return f"{gone}{body} — see `reaper-doctor explain {code}`{lost}"
    if r.disposition == "ignored":
        return (f"{gone}{c.generated} SIGCHLD sent and ignored (SIG_IGN): the kernel reaps "
                f"the children itself; 0 zombies left{lost}")
    young = (f" ({r.zombies_left} younger than {r.grace_s:g} s, still being reaped)"
             if r.zombies_left else "")
    return (f"{gone}{c.generated} SIGCHLD sent, {c.merged} merged, the handler ran "
            f"{_times(c.delivered)}, and every child that exited was reaped: 0 zombies "
            f"left{young} — healthy (a waitpid loop reaps all per signal){lost}")
