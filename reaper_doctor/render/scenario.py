"""`run`, `scenario run` and `scenario compare`: ServerRun -> text or JSON (str).

JSON schema `reaper-doctor/scenario/1` for one run, of a scenario or of
any command (`scenario` is then null and `command` says what ran);
`reaper-doctor/scenario-compare/1` for compare (a list of the same runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..model.scenario import SCENARIOS, ServerRun, TimelinePoint
from .common import address_text, sampling_phrase
from .json import finding_document, target_document
from .text import SEVERITY_COLORS, _finding_line, _styler, explained_line
from .width import DEFAULT_WIDTH, fill, fit_table

SCHEMA = "reaper-doctor/scenario/1"
COMPARE_SCHEMA = "reaper-doctor/scenario-compare/1"
BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 32


# ----------------------------------------------------------------------------
# JSON


def run_document(run: ServerRun) -> dict[str, Any]:
    s = run.scenario
    spec = run.spec
    load = run.load.as_dict() if run.load else {
        "requests": {"sent": 0, "ok": 0, "failed": 0, "hung": 0},
        "latency_ms": {"p50": None, "p99": None}}
    cleanup = run.cleanup
    request = spec.request
    return {
        "schema": SCHEMA,
        "scenario": s.name if s else None,
        "command": list(spec.argv),
        "reproduces": s.reproduces if s else None,
        "server": {"pid": run.server_pid, "port": run.port, "host": run.host,
                   "bound": run.bound, "scanned_pid": run.target_pid,
                   "script": spec.argv[1] if s else None,
                   "fd_limit": run.settings.fd_limit,
                   "lifetime_s": run.settings.server_lifetime_s() if s else None,
                   "exit_status": run.server_exit},
        "load": {"requests": run.settings.requests, "concurrency": run.settings.concurrency,
                 "timeout_s": run.settings.timeout_s,
                 "request": "http-get" if request is None else request.decode("latin-1")},
        **load,
        "expected": list(spec.expected),
        "also_allowed": list(spec.also_allowed),
        "findings": [finding_document(f) for f in run.findings],
        "missing": run.missing,
        "unexpected": [f.code for f in run.unexpected],
        "as_expected": run.as_expected,
        "why_not": run.why_not,
        "fix": s.fix if s else None,
        "scanned": run.scanned,
        "scan_error": run.scan_error,
        "scan": target_document(run.scan) if run.scan else None,
        "peak": {name: run.peak(name) for name in ("zombies", "fds", "close_wait",
                                                   "processes", "accept_queue")},
        "timeline": [sample.as_dict() for sample in run.timeline],
        "server_errors": list(run.server_errors),
        "output_tail": list(run.output_tail),
        "cleanup": ({"killed": cleanup.killed, "reaped": cleanup.reaped,
                     "leftover_pids": cleanup.leftover_pids} if cleanup else None),
        "leftover_processes": run.leftover_processes,
        "interrupted": run.interrupted,
    }


def render_run_json(run: ServerRun) -> str:
    return json.dumps(run_document(run), indent=2) + "\n"


def compare_document(runs: Sequence[ServerRun]) -> dict[str, Any]:
    first = runs[0].settings if runs else None
    return {
        "schema": COMPARE_SCHEMA,
        "load": ({"requests": first.requests, "concurrency": first.concurrency,
                  "timeout_s": first.timeout_s} if first else None),
        "runs": [run_document(r) for r in runs],
        "leftover_processes": sum(r.leftover_processes for r in runs),
        "as_expected": all(r.as_expected for r in runs),
    }


def render_compare_json(runs: Sequence[ServerRun]) -> str:
    return json.dumps(compare_document(runs), indent=2) + "\n"


# ----------------------------------------------------------------------------
# Text


def sparkline(values: Sequence[int | None], width: int = SPARK_WIDTH) -> str:
    """Values as bars, at most `width` wide (each bar the max of its bucket)."""
    clean = [v for v in values if v is not None]
    if not clean:
        return ""
    n = len(clean)
    w = min(width, n)
    buckets = [max(clean[i * n // w:max(i * n // w + 1, (i + 1) * n // w)]) for i in range(w)]
    low, high = min(buckets), max(buckets)
    if high == low:
        return BARS[0] * len(buckets)
    return "".join(BARS[(v - low) * (len(BARS) - 1) // (high - low)] for v in buckets)


def _timeline(samples: Sequence[TimelinePoint], width: int = DEFAULT_WIDTH) -> str:
    if not samples:
        return "Timeline: no sample"
    head = fill(f"Timeline ({len(samples)} samples over "
                f"{samples[-1].t_s - samples[0].t_s:.1f} s, every {_interval(samples)})", width,
                hang="  ")
    series = []
    for label, name in (("zombies", "zombies"), ("processes", "processes"),
                        ("open fds", "fds"), ("CLOSE_WAIT", "close_wait"),
                        ("accept queue", "accept_queue")):
        values = [getattr(s, name) for s in samples]
        known = [v for v in values if v is not None]
        if known:
            series.append((label, values, f"{known[0]} → {known[-1]}  (peak {max(known)})"))
    if not series:
        return head
    # The bars take what the labels and the figures leave (8 to SPARK_WIDTH).
    room = width - 4 - max(len(label) for label, _, _ in series) - max(
        len(text) for _, _, text in series)
    bars = max(8, min(SPARK_WIDTH, room))
    rows = [[label, sparkline(values, bars), text] for label, values, text in series]
    return head + "\n" + fit_table(rows, (), width, tablefmt="plain")


def _interval(samples: Sequence[TimelinePoint]) -> str:
    if len(samples) < 2:
        return "-"
    return f"{(samples[-1].t_s - samples[0].t_s) / (len(samples) - 1):.2f} s"


def _load_line(run: ServerRun, width: int = DEFAULT_WIDTH) -> str:
    st = run.settings
    if run.load is None:
        return fill(f"Load: not sent ({st.requests} requests planned)", width, hang="  ")
    r = run.load
    lat = ("latency p50 "
           f"{r.p50_ms:g} ms, p99 {r.p99_ms:g} ms" if r.p50_ms is not None else "no latency "
           "(no request completed)")
    return fill(f"Load: {r.sent} requests, {st.concurrency} at a time, timeout "
                f"{st.timeout_s:g} s: ok {r.ok} · failed {r.failed} · hung {r.hung} "
                f"in {r.duration_s:.1f} s ({r.requests_per_s:.1f} req/s); {lat}", width,
                hang="  ")


def render_run_text(run: ServerRun, *, color: bool = False, width: int = DEFAULT_WIDTH) -> str:
    style = _styler(color)
    s = run.scenario
    limit = f", ulimit -n {run.settings.fd_limit}" if run.settings.fd_limit else ""
    if s is not None:
        title = f"Scenario {s.name}"
        parts = [fill(f"{title} — {s.reproduces}", width, hang="  ").replace(
            title, style(title, bold=True), 1)]
        parts[0] += "\n" + fill(f"server PID {run.server_pid} on 127.0.0.1:{run.port}{limit}"
                                f" ({run.spec.argv[1]})", width, hang="  ")
    else:
        title = f"Server {run.spec.label}"
        held = f"PID {run.target_pid} " if run.target_pid != run.server_pid else ""
        parts = [fill(title, width, hang="  ").replace(title, style(title, bold=True), 1)
                 + "\n" + fill(f"PID {run.server_pid}; {held}listening on {run.bound}, load "
                               f"sent to {address_text((run.host or '-', run.port or 0))}"
                               f"{limit}", width, hang="  ")]
    parts.append(_load_line(run, width))
    if run.load and run.load.errors:
        top = sorted(run.load.errors.items(), key=lambda kv: -kv[1])[:3]
        parts[-1] += "\n" + "\n".join(fill(f"{n} × {err}", width, indent="  ", hang="      ")
                                       for err, n in top)
    parts.append(_timeline(run.timeline, width))
    parts.append(_findings(run, style, width))
    parts.append(_verdict(run, style, width))
    if run.server_errors:
        shown = run.server_errors[:10]
        more = len(run.server_errors) - len(shown)
        parts.append("Server stderr\n" + "\n".join(fill(line, width, indent="  ", hang="    ")
                                                    for line in shown)
                     + (f"\n  … {more} more distinct lines" if more > 0 else ""))
    if run.output_tail and (run.server_exit is not None or run.scan is None):
        ended = ("" if run.server_exit is None
                 else f" (it exited by itself, status {run.server_exit})")
        parts.append(f"Server output, last lines{ended}\n"
                     + "\n".join(fill(line, width, indent="  ", hang="    ")
                                 for line in run.output_tail[-10:]))
    parts.append(_cleanup(run, style, width))
    return "\n\n".join(p for p in parts if p) + "\n"


def _findings(run: ServerRun, style: Callable[..., str], width: int = DEFAULT_WIDTH) -> str:
    when = "during the load" if run.scanned == "during-load" else "after the load"
    if run.scan is None:
        return style(fill(f"Scan: {run.scan_error or 'not run'}", width, hang="  "), fg="red")
    head = fill(f"Scan of PID {run.scan.pid} {when}, "
                f"{sampling_phrase(run.scan.samples, run.scan.elapsed_s)}", width, hang="  ")
    if not run.findings:
        return head + "\n" + style("Findings: none", fg="green")
    lines = [head, f"Findings: {len(run.findings)}"]
    lines += [_finding_line(f, style, width) for f in run.findings]
    return "\n".join(lines)


def _verdict(run: ServerRun, style: Callable[..., str], width: int = DEFAULT_WIDTH) -> str:
    s, spec = run.scenario, run.spec
    expected = " ".join(spec.expected) or "none"
    found = " ".join(run.found_codes) or "none"
    allowed = spec.also_allowed
    if s is None and not spec.expected:
        lines = [f"Found {found}"]      # judged by severity alone (see _verdict_words)
    else:
        lines = [fill(f"Expected {expected} · found {found}"
                      + (f" (by-products allowed: {' '.join(allowed)})" if allowed else ""),
                      width, hang="  ")]
    if run.missing:
        lines.append(style(f"Missing: {' '.join(run.missing)}", fg="red"))
    if run.unexpected and (s is not None or spec.expected):
        lines.append(style("Unexpected: " + " ".join(sorted({f.code for f in run.unexpected})),
                           fg="red"))
    if s is not None:
        lines.append(fill(f"Fix: {s.fix}", width, hang="     "))
    if run.found_codes:
        lines.append(explained_line(run.found_codes, width))
    return "\n".join(lines)


def _cleanup(run: ServerRun, style: Callable[..., str], width: int = DEFAULT_WIDTH) -> str:
    c = run.cleanup
    if c is None:
        return ""
    left = c.leftover_processes
    over = f"{left} process{'es' if left != 1 else ''} left over"
    text = fill(f"Clean-up: killed {c.killed}, reaped {c.reaped}; {over}"
                + (f" (PIDs {' '.join(map(str, c.leftover_pids[:20]))})" if left else ""),
                width, hang="  ").replace(over, style(over, fg="green" if left == 0 else "red"), 1)
    words, good = _verdict_words(run)
    verdict = fill(f"Verdict: {run.spec.label} {words}", width, hang="  ").replace(
        words.split(":")[0], style(words.split(":")[0], fg="green" if good else "red",
                                   bold=True), 1)
    return text + "\n" + verdict


def _verdict_words(run: ServerRun) -> tuple[str, bool]:
    """What the run proved, in a few words, and whether that is good: a
    scenario (or a run with --expect) behaved as expected or not; any other
    run shows a leak or not."""
    why = "; ".join(run.why_not)
    if run.scenario is not None or run.spec.expected:
        if run.as_expected:
            return "behaved as expected", True
        return f"did NOT behave as expected: {why}", False
    if run.as_expected:
        return "shows no leak (no finding of severity warning or worse)", True
    if run.scan is None:
        return f"could not be judged: {why}", False
    if run.unexpected:
        return "leaks: " + " ".join(sorted({f.code for f in run.unexpected})), False
    return f"did not end cleanly: {why}", False


def render_compare_text(runs: Sequence[ServerRun], *, color: bool = False,
                        width: int = DEFAULT_WIDTH) -> str:
    style = _styler(color)
    if not runs:
        return "No scenario run.\n"
    st = runs[0].settings
    rows = []
    for run in runs:
        r = run.load
        findings = " ".join(run.found_codes) or "none"
        if run.scan is None:
            findings = "scan failed"
        worst = max((f.severity for f in run.findings), key=lambda v: v.rank, default=None)
        if worst is not None:
            findings = style(findings, fg=SEVERITY_COLORS[worst])
        rows.append([
            run.spec.label,
            r.ok if r else "-", r.failed if r else "-", r.hung if r else "-",
            _ms(r.p50_ms) if r else "-",
            f"{r.requests_per_s:.1f}" if r else "-",
            _num(run.peak("zombies")), _num(run.peak("fds")), findings,
            "yes" if run.as_expected else style("NO", fg="red", bold=True),
        ])
    table = fit_table(rows, ["scenario", "ok", "fail", "hung", "p50 ms", "req/s",
                             "peak zombies", "peak fds", "findings", "as expected"], width)
    head = fill(f"{st.requests} requests per scenario, {st.concurrency} at a time, "
                f"timeout {st.timeout_s:g} s each; hung = no end of reply within the timeout",
                width)
    left = sum(r.leftover_processes for r in runs)
    tail = f"Left over after all runs: {left} processes"
    why = [fill(f"{run.spec.label}: {'; '.join(run.why_not)}", width, indent="  ",
                hang="    ") for run in runs if run.why_not]
    if why:
        tail = style("Not as expected", fg="red", bold=True) + "\n" + "\n".join(why) \
            + "\n\n" + tail
    return f"{head}\n\n{table}\n\n{tail}\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_list_json() -> str:
    """`scenario list --json`: every scenario, what it reproduces, what it expects."""
    doc = {"schema": "reaper-doctor/scenario-list/1",
           "scenarios": [{"name": s.name, "script": s.script, "reproduces": s.reproduces,
                          "expected": list(s.expected), "fix": s.fix}
                         for s in SCENARIOS.values()]}
    return json.dumps(doc, indent=2)


def render_list_text(width: int = DEFAULT_WIDTH) -> str:
    rows = [(s.name, s.reproduces, " ".join(s.expected) or "none")
            for s in SCENARIOS.values()]
    return fit_table(rows, ("scenario", "reproduces", "expected findings"), width)
