"""tracefs text: event formats, trace_pipe lines, and the signal counts they add up to."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, fields
from typing import Iterable, Mapping

from ..model.trace import SignalCounts

EVENT_SYSTEM = "signal"
GENERATE = "signal_generate"
DELIVER = "signal_deliver"

# enum trace_signal_result (include/trace/events/signal.h): what
# signal_generate's `result` field means.
RESULT_DELIVERED = 0        # queued (or the pending bit set) for delivery
RESULT_IGNORED = 1          # dropped: the disposition ignores it
RESULT_ALREADY_PENDING = 2  # merged into the same signal already pending
RESULT_OVERFLOW_FAIL = 3    # a real-time signal that could not be queued
RESULT_LOSE_INFO = 4        # queued without its siginfo
RESULT_NAMES = {
    RESULT_DELIVERED: "queued",
    RESULT_IGNORED: "ignored",
    RESULT_ALREADY_PENDING: "merged",
    RESULT_OVERFLOW_FAIL: "overflow_fail",
    RESULT_LOSE_INFO: "lose_info",
}


def mountinfo_tracefs_mounts(text: str) -> list[str]:
    """Mount points of every `tracefs` filesystem listed in mountinfo `text`."""
    from .procfs import parse_mountinfo

    return [m.mount_point for m in parse_mountinfo(text) if m.fstype == "tracefs"]


@dataclass(frozen=True)
class EventFormat:
    """An event's `format` file: its field names and how its lines print."""

    name: str
    id: int | None
    fields: tuple[str, ...]          # every field, common_* included
    print_fmt: str                   # the printf format, unescaped
    args: tuple[str, ...]            # one name per conversion: "sig" for REC->sig
    body_re: re.Pattern[str] | None  # matches the text after "name: "

    def has_field(self, name: str) -> bool:
        return name in self.fields

    def parse_body(self, body: str) -> dict[str, str]:
        """Field values of one event's text; key=value pairs if the format does not match."""
        if self.body_re is not None:
            m = self.body_re.match(body)
            if m:
                return {self.args[int(k[1:])]: v for k, v in m.groupdict().items()}
        return generic_fields(body)


_CONVERSION = re.compile(r"%%|%[-#0 +]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L)?([diouxXcsp])[A-Za-z]*")
_CONVERSION_RE = {
    "d": r"-?\d+", "i": r"-?\d+", "u": r"\d+", "o": r"[0-7]+",
    "x": r"(?:0x)?[0-9a-fA-F]+", "X": r"(?:0x)?[0-9a-fA-F]+",
    "c": r".", "p": r"\S+",
    # Greedy: a comm may hold spaces or even "pid=", and the fields after
    # it are anchored to the end of the line, so the last match wins.
    "s": r".*",
}


def _split_args(text: str) -> list[str]:
    """Split the argument list of a print fmt at commas outside brackets."""
    args: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        args.append("".join(current).strip())
    return args


def _arg_name(expr: str, index: int) -> str:
    m = re.fullmatch(r"\(?\s*REC->(\w+)\s*\)?", expr.strip())
    if m:
        return m.group(1)
    m = re.fullmatch(r"__get_str\((\w+)\)", expr.strip())
    return m.group(1) if m else f"arg{index}"


def parse_event_format(text: str) -> EventFormat:
    """Parse a tracefs `events/<system>/<event>/format` file."""
    name, event_id, names = "", None, []
    print_fmt, rest = "", ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("name:"):
            name = stripped[5:].strip()
        elif stripped.startswith("ID:"):
            try:
                event_id = int(stripped[3:].strip())
            except ValueError:
                event_id = None
        elif stripped.startswith("field:"):
            decl = stripped[6:].split(";", 1)[0].strip()
            m = re.search(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", decl)
            if m:
                names.append(m.group(1))
        elif stripped.startswith("print fmt:"):
            spec = stripped[len("print fmt:"):].strip()
            m = re.match(r'"((?:[^"\\]|\\.)*)"\s*,?\s*(.*)$', spec)
            if m:
                print_fmt = re.sub(r"\\(.)", lambda e: {"n": "\n", "t": "\t"}.get(
                    e.group(1), e.group(1)), m.group(1))
                rest = m.group(2)
    exprs = _split_args(rest)
    pieces: list[str] = []
    args: list[str] = []
    pos = 0
    for m in _CONVERSION.finditer(print_fmt):
        pieces.append(re.escape(print_fmt[pos:m.start()]))
        pos = m.end()
        if m.group(0) == "%%":
            pieces.append("%")
            continue
        index = len(args)
        args.append(_arg_name(exprs[index], index) if index < len(exprs) else f"arg{index}")
        pieces.append(f"(?P<a{index}>{_CONVERSION_RE[m.group(1)]})")
    pieces.append(re.escape(print_fmt[pos:]))
    body_re = re.compile("".join(pieces) + r"\s*$", re.DOTALL) if print_fmt else None
    return EventFormat(name=name, id=event_id, fields=tuple(names), print_fmt=print_fmt,
                       args=tuple(args), body_re=body_re)


def generic_fields(body: str) -> dict[str, str]:
    """`key=value` pairs of an event's text, for a format we could not match."""
    return {m.group(1): m.group(2) for m in re.finditer(r"(\w+)=(\S*)", body)}


@dataclass(frozen=True)
class TraceRecord:
    """One event line of `trace_pipe`."""

    task: str                 # comm of the task that was running ("<...>" if unknown)
    task_pid: int             # its PID (thread id): common_pid
    cpu: int
    timestamp_s: float
    event: str                # "signal_generate"
    fields: Mapping[str, str]


@dataclass(frozen=True)
class LostEvents:
    """`CPU:1 [LOST 23 EVENTS]`: the ring buffer overflowed."""

    cpu: int
    count: int


_LOST_RE = re.compile(r"^\s*CPU:(\d+) \[LOST (\d+) EVENTS\]\s*$")
# "  python3-3743  (   3743) [000] dN.2.  215.928314: signal_generate: sig=17 ..."
# The tgid column appears with options/record-tgid, the flags column with
# options/irq-info; a task name may contain spaces and dashes.
_LINE_RE = re.compile(
    r"^\s*(?P<task>.*)-(?P<pid>\d+)\s+(?:\(\s*(?:\d+|-+)\s*\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s\[\]:]{4,6})\s+)?(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>\w+):\s?(?P<body>.*)$")


def parse_trace_line(line: str, formats: Mapping[str, EventFormat] | None = None
                     ) -> TraceRecord | LostEvents | None:
    """Parse one `trace_pipe` line; None for anything that is not an event."""
    line = line.rstrip("\n")
    m = _LOST_RE.match(line)
    if m:
        return LostEvents(cpu=int(m.group(1)), count=int(m.group(2)))
    m = _LINE_RE.match(line)
    if not m:
        return None
    event, body = m.group("event"), m.group("body")
    fmt = (formats or {}).get(event)
    values = fmt.parse_body(body) if fmt is not None else generic_fields(body)
    return TraceRecord(task=m.group("task").strip(), task_pid=int(m.group("pid")),
                       cpu=int(m.group("cpu")), timestamp_s=float(m.group("ts")),
                       event=event, fields=values)


class _Tally:
    """Mutable counting behind SignalCounts, fed with parsed records."""

    def __init__(self, result_field: str, sig_field: str, signum: int) -> None:
        self.counter: Counter[str] = Counter()
        self.result_field = result_field
        self.sig_field = sig_field
        self.signum = signum

    def add(self, item: TraceRecord | LostEvents | None) -> None:
        if isinstance(item, LostEvents):
            self.counter["lost_events"] += item.count
            return
        if item is None:
            return
        try:
            if int(item.fields.get(self.sig_field, self.signum)) != self.signum:
                return  # the kernel filter should make this impossible
        except ValueError:
            return
        if item.event == GENERATE:
            self.counter["generated"] += 1
            try:
                result = int(item.fields.get(self.result_field, ""))
            except ValueError:
                result = -1
            self.counter[RESULT_NAMES.get(result, "other_result")] += 1
        elif item.event == DELIVER:
            self.counter["delivered"] += 1

    def counts(self) -> SignalCounts:
        return SignalCounts(**{k: self.counter[k] for k in
                               (f.name for f in fields(SignalCounts))})


def count_lines(lines: Iterable[str], formats: Mapping[str, EventFormat], signum: int,
                result_field: str = "result", sig_field: str = "sig") -> SignalCounts:
    """Count the events of captured `trace_pipe` text (pure; for tests and replays)."""
    tally = _Tally(result_field, sig_field, signum)
    for line in lines:
        tally.add(parse_trace_line(line, formats))
    return tally.counts()
