"""`watch` output: a line per sample, the summary, JSON, CSV rows."""

from __future__ import annotations

import json
from typing import Any, Sequence

from ..model import WATCH_SERIES, WatchLimits, WatchReport, WatchSample
from .common import safe
from .json import finding_document
from .width import DEFAULT_WIDTH, fill, fit_table, widest_line

SCHEMA = "reaper-doctor/watch/1"
CSV_COLUMNS = ("t_s", *WATCH_SERIES)
SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40
LIMIT_OF = {"fds": "nofile", "tasks": "nproc", "pids_cgroup": "pids_cgroup"}


def header_line(pid: int, name: str, interval_s: float, duration_s: float | None,
                width: int = DEFAULT_WIDTH) -> str:
    how_long = f"for {duration_s:g} s" if duration_s is not None else "until Ctrl-C"
    return fill(f"Watching PID {pid} ({safe(name)}) every {interval_s:g} s {how_long}; "
                "Ctrl-C ends with a summary", width, hang="  ")


# The sample lines are a table printed as it grows: a header once, then a
# row per sample, each column as wide as its name (at least 6): 59 columns.
_COLUMN_WIDTHS = {name: max(6, len(name)) for name in WATCH_SERIES}


def sample_header() -> str:
    """The line above the sample lines: what each column is."""
    return "         t" + "".join(f"  {name:>{w}}" for name, w in _COLUMN_WIDTHS.items())


def sample_line(s: WatchSample) -> str:
    def v(x: int | None) -> str:
        return "?" if x is None else str(x)

    return f"{s.t_s:8.1f} s" + "".join(f"  {v(getattr(s, name)):>{w}}"
                                       for name, w in _COLUMN_WIDTHS.items())


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """Unicode blocks from the series' min to its max; long series are
    averaged into `width` buckets. A flat series is a flat line."""
    if not values:
        return ""
    if len(values) > width:
        buckets = []
        for i in range(width):
            part = values[i * len(values) // width:(i + 1) * len(values) // width]
            buckets.append(sum(part) / len(part))
        values = buckets
    low, high = min(values), max(values)
    if high == low:
        return SPARK[0] * len(values)
    top = len(SPARK) - 1
    return "".join(SPARK[round((v - low) / (high - low) * top)] for v in values)


def _series(report: WatchReport, name: str) -> list[int]:
    return [getattr(s, name) for s in report.samples if getattr(s, name) is not None]


def _limit_text(name: str, limits: WatchLimits) -> str:
    if name == "fds":
        return _num(limits.nofile) + " (ulimit -n)"
    if name == "tasks":
        text = _num(limits.nproc) + " (ulimit -u)"
        return text if limits.nproc_enforced else text + ", not enforced"
    if name == "pids_cgroup":
        return _num(limits.pids_cgroup) + " (pids.max)"
    return ""


def _range(values: Sequence[int]) -> str:
    if not values:
        return "?"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def _num(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def summary_text(report: WatchReport, *, color: bool = False, width: int = DEFAULT_WIDTH) -> str:
    from .text import _finding_line, _styler

    style = _styler(color)
    lines = []
    span = report.samples[-1].t_s if report.samples else 0.0
    if report.ended == "target-exited":
        lines.append(style(f"PID {report.pid} exited after {span:.1f} s: watch ended",
                           fg="yellow"))
    elif report.ended == "interrupted":
        lines.append(f"Interrupted after {span:.1f} s")
    n = len(report.samples)
    every = f"every {report.interval_s:g} s"
    if n > 1:
        # A big tree takes longer to sample than the interval: say so.
        measured = (report.samples[-1].t_s - report.samples[0].t_s) / (n - 1)
        if measured > report.interval_s * 1.1 + 0.05:
            every = f"every {measured:.2f} s (asked {report.interval_s:g} s)"
    lines.append(fill(f"Summary: {n} sample{'s' if n != 1 else ''} over {span:.1f} s, "
                      f"{every}", width, hang="  "))
    rows = []
    for name in WATCH_SERIES:
        values = _series(report, name)
        rate = report.rates_per_min.get(name)
        limit = LIMIT_OF.get(name)
        rows.append([name,
                     values[0] if values else "?", values[-1] if values else "?",
                     _range(values),
                     "—" if rate is None else f"{rate:+.1f}",
                     _limit_text(name, report.limits) if limit else "",
                     _eta_text(report.eta_s.get(limit)) if limit else ""])
    headers = ["series", "first", "last", "range", "/min", "limit", "left"]
    # The trend takes what the other columns leave of the line (8 to SPARK_WIDTH).
    spark_width = max(8, min(SPARK_WIDTH, width - 2 - widest_line(
        fit_table(rows, headers, width - 10, last=[5]))))
    for row, name in zip(rows, WATCH_SERIES):
        row.append(sparkline([float(v) for v in _series(report, name)], spark_width))
    lines.append(fit_table(rows, [*headers, "trend"], width, last=[5]))
    lines.append(fill("range: min–max; /min: growth per minute; left: time until the limit "
                      "at that rate", width))
    if report.findings:
        lines.append(f"Findings: {len(report.findings)}")
        lines.extend(_finding_line(f, style, width) for f in report.findings)
    else:
        lines.append(style("Findings: none", fg="green") +
                     f" — no steady growth over {span:.1f} s")
    return "\n".join(lines) + "\n"


def watch_document(report: WatchReport) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "pid": report.pid, "name": report.name,
        "interval_s": report.interval_s,
        "samples": [{"t_s": round(s.t_s, 3), **{k: getattr(s, k) for k in WATCH_SERIES}}
                    for s in report.samples],
        "rates_per_min": dict(report.rates_per_min),
        "eta_s": dict(report.eta_s),
        "limits": {"nofile": report.limits.nofile, "nproc": report.limits.nproc,
                   "nproc_enforced": report.limits.nproc_enforced,
                   "pids_cgroup": report.limits.pids_cgroup},
        "listen_ports": list(report.listen_ports),
        "ended": report.ended, "gone": report.ended == "target-exited",
        "findings": [finding_document(f) for f in report.findings],
    }


def render_watch_json(report: WatchReport) -> str:
    return json.dumps(watch_document(report), indent=2) + "\n"


def csv_row(s: WatchSample) -> list[object]:
    return [f"{s.t_s:.3f}", *("" if getattr(s, k) is None else getattr(s, k)
                              for k in WATCH_SERIES)]


__all__ = ["header_line", "sample_header", "sample_line", "sparkline", "summary_text", "render_watch_json",
           "watch_document", "csv_row", "CSV_COLUMNS"]
