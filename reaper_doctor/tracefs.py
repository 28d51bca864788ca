"""Count one signal sent to one process, from the kernel's signal tracepoints.

The kernel fires `signal:signal_generate` once per signal sent, with a
`result` field saying what became of it (`enum trace_signal_result` in
include/trace/events/signal.h), and `signal:signal_deliver` when a task
dequeues the signal to run its handler (issue 7). Comparing the two shows
SIGCHLD coalescing with real numbers: 64 children exit, 64 SIGCHLD are
generated, 53 of them merge into one already pending, the handler runs 11
times.

Everything happens in a private tracing instance
(`instances/reaper-doctor-<our pid>`) with its own ring buffer and event
switches, so the global trace and other users of tracefs are untouched,
and the instance is removed on every exit path. This module never mounts
anything.

Public API (reused by `trace`, and later `lesson --trace` / `scan --trace`)::

    with SignalTrace(pid, signal.SIGCHLD) as tr:   # may raise TracefsError
        ...                                        # let things happen
        step = tr.read()          # drain the pipe: counts of the new events
        interval = tr.take_interval()   # counts since the last take_interval
    tr.totals                     # SignalCounts for the whole trace

Parsing is pure and unit-tested on captured text: `parse_event_format`,
`parse_trace_line`, `mountinfo_tracefs_mounts`.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Mapping

TRACEFS_ENV = "REAPER_DOCTOR_TRACEFS"
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNT_FIX = "mount -t tracefs nodev /sys/kernel/tracing"
INSTANCE_PREFIX = "reaper-doctor-"
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

# A filter naming more threads than this only names the main thread: the
# filter file takes one page, and a forking server is rarely that threaded.
MAX_FILTER_TIDS = 64


# --------------------------------------------------------------- errors


class TracefsError(Exception):
    """A one-line reason tracing cannot run; the CLI prints it and exits 2."""


class TracefsNotFound(TracefsError):
    """No tracefs mount to use."""


class TracefsPermissionError(TracefsError):
    """tracefs exists but we may not use it (not root, lockdown)."""


class SignalEventsMissing(TracefsError):
    """The kernel has no signal:signal_generate / signal_deliver tracepoints."""


class TraceTargetGone(TracefsError):
    """The process to trace does not exist."""


def _permission(path: Path | str, err: OSError | None = None) -> TracefsPermissionError:
    why = f" ({err.strerror.lower()})" if err is not None and err.strerror else ""
    return TracefsPermissionError(
        f"cannot use tracefs at {path}{why}: tracing signals needs root; run as root")


# ------------------------------------------------------ finding tracefs


def mountinfo_tracefs_mounts(text: str) -> list[str]:
    """Mount points of every `tracefs` filesystem listed in mountinfo `text`."""
    from .procfs import parse_mountinfo

    return [m.mount_point for m in parse_mountinfo(text) if m.fstype == "tracefs"]


def _probe(path: Path) -> bool | None:
    """True: a usable tracefs root; False: none there; None: permission denied."""
    try:
        os.stat(path / "instances")
        os.stat(path / "events")
    except PermissionError:
        return None
    except OSError:
        return False
    return (path / "instances").is_dir() and (path / "events").is_dir()


def find_tracefs(environ: Mapping[str, str] | None = None, mountinfo: str | None = None,
                 candidates: Iterable[str] = TRACEFS_CANDIDATES) -> Path:
    """The tracefs root to use; raises TracefsError saying what is missing.

    `REAPER_DOCTOR_TRACEFS` (meant for tests) overrides the search. Otherwise
    /sys/kernel/tracing, /sys/kernel/debug/tracing, then any tracefs line of
    /proc/self/mountinfo (`mountinfo` text and `candidates` may be given,
    for tests).
    """
    env = os.environ if environ is None else environ
    override = env.get(TRACEFS_ENV)
    if override:
        path = Path(override)
        state = _probe(path)
        if state is None:
            raise _permission(path)
        if not state:
            raise TracefsNotFound(
                f"{TRACEFS_ENV}={override} is not a tracefs mount (no instances/ and events/ "
                f"there); unset it, or mount it: mount -t tracefs nodev {override}")
        return path
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
    denied = False
    candidates = tuple(candidates)
    for candidate in (*candidates, *mountinfo_tracefs_mounts(mountinfo)):
        state = _probe(Path(candidate))
        if state:
            return Path(candidate)
        denied = denied or state is None
    if denied:
        raise _permission(candidates[0] if candidates else "tracefs")
    raise TracefsNotFound(
        f"tracefs is not mounted (looked in {', '.join(candidates)} and "
        f"/proc/self/mountinfo); mount it as root: {MOUNT_FIX}")


# ------------------------------------------------------ event formats


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
    args, depth, current = [], 0, []
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
    pieces, args, pos = [], [], 0
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


# --------------------------------------------------------- trace lines


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


# -------------------------------------------------------------- counts


@dataclass(frozen=True)
class SignalCounts:
    """What happened to the traced signal. All counts are events.

    `generated` = queued + merged + ignored + overflow_fail + lose_info +
    other_result. `delivered` counts signal_deliver: the target dequeued the
    signal to act on it (for a caught signal: one run of the C-level handler).
    `lost_events` counts events the ring buffer dropped: when it is not 0 the
    other counts are low.
    """

    generated: int = 0
    queued: int = 0            # result 0: became pending
    merged: int = 0            # result 2: already pending, merged into it
    ignored: int = 0           # result 1: discarded by the disposition
    overflow_fail: int = 0     # result 3
    lose_info: int = 0         # result 4
    other_result: int = 0      # a result code this kernel added later
    delivered: int = 0
    lost_events: int = 0

    def __add__(self, other: SignalCounts) -> SignalCounts:
        return SignalCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                               for f in fields(self)})

    def __sub__(self, other: SignalCounts) -> SignalCounts:
        return SignalCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                               for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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


def read_event_format(root: Path, event: str) -> EventFormat:
    """The parsed `events/signal/<event>/format` file under tracefs `root`."""
    path = root / "events" / EVENT_SYSTEM / event / "format"
    try:
        return parse_event_format(path.read_text())
    except FileNotFoundError:
        raise SignalEventsMissing(
            f"the kernel has no signal:{event} tracepoint ({path} is missing); "
            "it needs CONFIG_EVENT_TRACING") from None
    except PermissionError as e:
        raise _permission(root, e) from None


def preflight(tracefs: str | os.PathLike[str] | None = None) -> Path:
    """Check, before any work starts, that signals can be traced here.

    The tracefs root (found as `find_tracefs` does, unless given), both
    signal tracepoints, and a writable `instances/`. Raises TracefsError
    with a one-line reason; nothing is created.
    """
    root = Path(tracefs) if tracefs is not None else find_tracefs()
    for event in (GENERATE, DELIVER):
        read_event_format(root, event)
    if not os.access(root / "instances", os.W_OK):
        raise _permission(root / "instances")
    return root


# ------------------------------------------------------- the instance


def thread_ids(pid: int) -> list[int]:
    """The thread ids of `pid` (from /proc/PID/task); TraceTargetGone if none."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
    except FileNotFoundError:
        raise TraceTargetGone(f"no process with PID {pid}") from None
    except OSError:
        return [pid]


def _or_terms(name: str, values: list[int]) -> str:
    return "(" + " || ".join(f"{name} == {v}" for v in values) + ")"


_active_names: set[str] = set()
_active_lock = threading.Lock()


class SignalTrace:
    """Count signal `signum` sent to and delivered in process `pid`.

    A context manager: entering creates the private instance, sets the event
    filters, enables the events and opens `trace_pipe` (non-blocking);
    leaving (normally, by an exception or by Ctrl-C) disables the events and
    removes the instance. Raises TracefsError subclasses with one-line
    messages. Filters name the target's threads as they are when the trace
    starts (only the main thread if there are more than MAX_FILTER_TIDS);
    threads created later are not traced.

    Not thread-safe: call read()/take_interval() from one thread.
    """

    def __init__(self, pid: int, signum: int = signal.SIGCHLD, *,
                 tracefs: str | os.PathLike[str] | None = None) -> None:
        self.pid = int(pid)
        self.signum = int(signum)
        self._tracefs_arg = tracefs
        self.tracefs: Path | None = None
        self.instance: Path | None = None
        self.formats: dict[str, EventFormat] = {}
        self.tids: list[int] = []
        self.filters: dict[str, str] = {}
        self._fd: int | None = None
        self._partial = b""
        self._tally: _Tally | None = None
        self._interval_start = SignalCounts()
        self._enabled: list[Path] = []
        self._name: str | None = None

    # -- life cycle

    def __enter__(self) -> SignalTrace:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except TracefsError:
            if exc_type is None:
                raise
            # An exception is already on its way out: do not hide it.

    def start(self) -> SignalTrace:
        """Create the instance and start counting. Returns self."""
        if self.instance is not None:
            raise RuntimeError("SignalTrace already started")
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        root = Path(self._tracefs_arg) if self._tracefs_arg is not None else find_tracefs()
        self.tracefs = root
        self.tids = thread_ids(self.pid)
        gen, dlv = self._read_format(root, GENERATE), self._read_format(root, DELIVER)
        self.formats = {GENERATE: gen, DELIVER: dlv}
        # Field names come from the format files: old kernels called the
        # result `res`, newer ones print `res=` but name the field `result`.
        result_field = next((n for n in ("result", "res") if gen.has_field(n)), None)
        for fmt, needed in ((gen, ("sig", "pid")), (dlv, ("sig", "common_pid"))):
            missing = [n for n in needed if not fmt.has_field(n)]
            if missing or (fmt is gen and result_field is None):
                raise SignalEventsMissing(
                    f"the kernel's signal:{fmt.name} tracepoint has no field "
                    f"{(missing or ['result'])[0]!r}; this kernel's signal events are "
                    "not supported")
        self._tally = _Tally(result_field or "result", "sig", self.signum)
        tids = self.tids if len(self.tids) <= MAX_FILTER_TIDS else [self.pid]
        self.filters = {
            GENERATE: f"sig == {self.signum} && {_or_terms('pid', tids)}",
            DELIVER: f"sig == {self.signum} && {_or_terms('common_pid', tids)}",
        }
        self.instance = self._make_instance(root)
        events = self.instance / "events" / EVENT_SYSTEM
        for name, text in self.filters.items():
            self._write(events / name / "filter", text)
        for name in self.filters:
            self._write(events / name / "enable", "1")
            self._enabled.append(events / name / "enable")
        try:
            self._fd = os.open(self.instance / "trace_pipe",
                               os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError as e:
            raise _permission(self.instance / "trace_pipe", e) from None
        except OSError as e:
            raise TracefsError(f"cannot open {self.instance}/trace_pipe: {e.strerror}") from None

    def _read_format(self, root: Path, event: str) -> EventFormat:
        return read_event_format(root, event)

    def _make_instance(self, root: Path) -> Path:
        base = f"{INSTANCE_PREFIX}{os.getpid()}"
        with _active_lock:
            n = 1
            name = base
            while name in _active_names:
                n += 1
                name = f"{base}-{n}"
            _active_names.add(name)
        self._name = name
        path = root / "instances" / name
        try:
            try:
                os.mkdir(path)
            except FileExistsError:
                # Named after our PID and not one of ours: left by an earlier
                # process that had our PID and was killed. Reclaim it.
                os.rmdir(path)
                os.mkdir(path)
        except PermissionError as e:
            raise _permission(root / "instances", e) from None
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise SignalEventsMissing(
                    f"{root} has no instances/ directory: this kernel cannot make a "
                    "private tracing instance") from None
            raise TracefsError(f"cannot create tracing instance {path}: {e.strerror}") from None
        return path

    def _write(self, path: Path, text: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(text + "\n")
        except PermissionError as e:
            raise _permission(path, e) from None
        except OSError as e:
            detail = ""
            if self.instance is not None:
                try:
                    detail = (self.instance / "error_log").read_text().strip().splitlines()[-1]
                except (OSError, IndexError):
                    pass
            raise TracefsError(f"cannot write {text!r} to {path}: {e.strerror}"
                               + (f" ({detail})" if detail else "")) from None

    def close(self) -> None:
        """Stop, disable the events and remove the instance. Idempotent.

        SIGINT and SIGTERM are held off while this runs (main thread only)
        so that a Ctrl-C cannot leave the instance behind; they act right
        after. Raises TracefsError if the instance cannot be removed.
        """
        held = {signal.SIGINT, signal.SIGTERM}
        masked = threading.current_thread() is threading.main_thread()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held) if masked else None
        try:
            self._close()
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _close(self) -> None:
        for enable in self._enabled:
            try:
                enable.write_text("0\n")
            except OSError:
                pass
        self._enabled = []
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
        instance, self.instance = self.instance, None
        name, self._name = self._name, None
        try:
            if instance is not None:
                _remove_instance(instance)
        finally:
            if name is not None:
                with _active_lock:
                    _active_names.discard(name)

    # -- counting

    @property
    def totals(self) -> SignalCounts:
        """Counts since the start (as of the last read)."""
        return self._tally.counts() if self._tally is not None else SignalCounts()

    def read(self) -> SignalCounts:
        """Drain `trace_pipe` without blocking; the counts of the events read now."""
        if self._fd is None or self._tally is None:
            return SignalCounts()
        before = self._tally.counts()
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not chunk:
                break
            data = self._partial + chunk
            *lines, self._partial = data.split(b"\n")
            for line in lines:
                self._tally.add(parse_trace_line(line.decode("utf-8", "replace"),
                                                 self.formats))
        return self._tally.counts() - before

    def take_interval(self) -> SignalCounts:
        """read(), then the counts since the previous take_interval (or the start)."""
        self.read()
        now = self.totals
        interval, self._interval_start = now - self._interval_start, now
        return interval


def _remove_instance(path: Path, attempts: int = 50, pause_s: float = 0.02) -> None:
    """rmdir a tracing instance; EBUSY (a reader still open) is retried briefly."""
    for attempt in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == attempts - 1:
                raise TracefsError(f"could not remove tracing instance {path}: {e.strerror}; "
                                   f"remove it as root: rmdir {path}") from None
            time.sleep(pause_s)


def instances_of(root: Path, pid: int | None = None) -> list[Path]:
    """Our instances under tracefs `root`: of process `pid`, or of any process."""
    try:
        names = os.listdir(root / "instances")
    except OSError:
        return []
    pattern = re.compile(re.escape(INSTANCE_PREFIX)
                         + (str(pid) if pid is not None else r"\d+") + r"(?:-\d+)?")
    return [root / "instances" / n for n in sorted(names) if pattern.fullmatch(n)]


def signal_name(signum: int) -> str:
    """SIGCHLD for 17; SIGRTMIN+3 for a real-time signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"SIG{signum}"


def parse_signal(text: str) -> int:
    """17, "CHLD", "SIGCHLD", "sigchld" -> 17; ValueError for anything else."""
    value = str(text).strip()
    if value.isdigit():
        signum = int(value)
        if 1 <= signum <= signal.SIGRTMAX:
            return signum
        raise ValueError(f"no signal number {signum}")
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {text!r}") from None


__all__ = [
    "TRACEFS_ENV", "MOUNT_FIX", "INSTANCE_PREFIX", "TracefsError", "TracefsNotFound",
    "TracefsPermissionError", "SignalEventsMissing", "TraceTargetGone", "find_tracefs",
    "mountinfo_tracefs_mounts", "EventFormat", "parse_event_format", "TraceRecord",
    "LostEvents", "parse_trace_line", "SignalCounts", "count_lines", "SignalTrace",
    "instances_of", "signal_name", "parse_signal", "thread_ids", "preflight",
    "read_event_format",
]
