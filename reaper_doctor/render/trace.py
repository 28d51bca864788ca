"""`trace` output: the JSON document and the text summary."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

from ..diagnose.trace import trace_findings, trace_verdict
from .json import finding_document
from .width import DEFAULT_WIDTH, fill, fit_table

if TYPE_CHECKING:
    from ..model.trace import TraceResult, TraceSample

SCHEMA = "reaper-doctor/trace/1"


def result_document(r: TraceResult) -> dict[str, Any]:
    """The `reaper-doctor/trace/1` JSON document (contract keys first)."""
    c = r.counts
    return {
        "schema": SCHEMA, "pid": r.pid, "signal": r.signal,
        "duration_s": round(r.duration_s, 3),
        "generated": c.generated, "merged": c.merged, "delivered": c.delivered,
        "ignored": c.ignored, "children_exited": r.children_exited,
        "zombies_left": r.zombies_left,
        "findings": [finding_document(f) for f in trace_findings(r)],
        "queued": c.queued, "overflow_fail": c.overflow_fail, "lose_info": c.lose_info,
        "other_result": c.other_result, "lost_events": c.lost_events,
        "zombies_persisting": r.zombies_persisting, "zombies_before": r.zombies_before,
        "grace_s": r.grace_s, "disposition": r.disposition,
        "sigchld": r.disposition if r.signum == signal.SIGCHLD else None, "ended": r.ended,
        "interval_s": r.interval_s, "instance": r.instance,
        "verdict": trace_verdict(r),
        "samples": [s.as_dict() for s in r.samples],
    }


def render_json(r: TraceResult) -> str:
    return json.dumps(result_document(r), indent=2)


SAMPLE_HEADER = (f"{'t_s':>7}  {'generated':>9}  {'merged':>6}  {'delivered':>9}  "
                 f"{'ignored':>7}  {'exited':>6}  {'zombies':>7}")


def render_sample(s: TraceSample) -> str:
    c = s.counts
    return (f"{s.t_s:7.1f}  {c.generated:9d}  {c.merged:6d}  {c.delivered:9d}  "
            f"{c.ignored:7d}  {s.children_exited:6d}  {s.zombies:7d}")


def render_text(r: TraceResult, *, color: bool = False, width: int = DEFAULT_WIDTH) -> str:
    """The summary printed at the end (the interval lines are printed as they
    come); `color`: the verdict in red (a finding) or green, a warning in yellow."""
    import click

    def style(text: str, **how: Any) -> str:
        return click.style(text, **how) if color else text

    c = r.counts
    rows = [
        ("generated", c.generated, f"{r.signal} sent to PID {r.pid}"),
        ("merged", c.merged, "already pending: merged, never seen on its own"),
        ("delivered", c.delivered, "dequeued by the process (handler runs)"),
        ("ignored", c.ignored, "discarded by the disposition"),
    ]
    if c.overflow_fail or c.lose_info or c.other_result:
        rows.append(("other", c.overflow_fail + c.lose_info + c.other_result,
                     f"overflow_fail {c.overflow_fail}, lose_info {c.lose_info}"))
    if r.signum == signal.SIGCHLD:
        persisting = ("" if r.zombies_persisting == r.zombies_left else
                      f"; {r.zombies_persisting} of them for {r.grace_s:g} s or more")
        rows += [("children exited", r.children_exited,
                  "at least: seen in /proc while traced (one born and reaped between two "
                  "looks is missed), so never more than generated"),
                 ("zombies left", r.zombies_left,
                  f"at the end ({r.zombies_before} before the trace){persisting}")]
    ended = {"duration": "duration reached", "interrupted": "interrupted",
             "target-exited": "the target exited"}[r.ended]
    head = (f"PID {r.pid}: {r.signal} for {r.duration_s:.1f} s ({ended}); "
            f"{r.signal} disposition {r.disposition or 'unknown'}")
    found = trace_findings(r)
    verdict = fill(f"verdict: {trace_verdict(r)}", width, hang="  ")[len("verdict: "):]
    lines = [fill(head, width, hang="  "),
             fit_table(rows, (), width, tablefmt="plain", colalign=("left", "right", "left")),
             "verdict: " + style(verdict, fg="red" if found else "green" if
                                 r.signum == signal.SIGCHLD else None, bold=bool(found))]
    if c.lost_events:
        lines.append(style(f"warning: the ring buffer dropped {c.lost_events} events",
                           fg="yellow"))
    return "\n".join(lines)
