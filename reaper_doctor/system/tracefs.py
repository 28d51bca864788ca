"""Count one signal sent to one process, from the kernel's signal tracepoints.

The kernel fires `signal:signal_generate` once per signal sent, with a
`result` field saying what became of it (`enum trace_signal_result` in
include/trace/events/signal.h), and `signal:signal_deliver` when a task
dequeues the signal to run its handler. Comparing the two shows SIGCHLD
coalescing with real numbers: 64 children exit, 64 SIGCHLD are generated,
53 of them merge into one already pending, the handler runs 11 times.

Everything happens in a private tracing instance
(`instances/reaper-doctor-<our pid>`) with its own ring buffer and event
switches, so the global trace and other users of tracefs are untouched,
and the instance is removed on every exit path. This module never mounts
anything.

    with SignalTrace(pid, signal.SIGCHLD) as tr:   # may raise TracefsError
        ...                                        # let things happen
        step = tr.read()          # drain the pipe: counts of the new events
        interval = tr.take_interval()   # counts since the last take_interval
    tr.totals                     # SignalCounts for the whole trace

The text it reads is parsed in parse/tracefs.py (pure, unit-tested on
captured text).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from ..collect import proc
from ..collect.proc import read_text
from ..model.trace import SignalCounts
from ..parse.tracefs import (
    DELIVER,
    EVENT_SYSTEM,
    GENERATE,
    _Tally,
    mountinfo_tracefs_mounts,
    parse_event_format,
    parse_trace_line,
)
from .lifecycle import deferred_signals

if TYPE_CHECKING:
    from ..parse.tracefs import EventFormat

TRACEFS_ENV = "REAPER_DOCTOR_TRACEFS"
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNT_FIX = "mount -t tracefs nodev /sys/kernel/tracing"
INSTANCE_PREFIX = "reaper-doctor-"

# A filter naming more threads than this only names the main thread: the
# filter file takes one page, and a forking server is rarely that threaded.
MAX_FILTER_TIDS = 64


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
            mountinfo = read_text(f"{proc.ROOT}/self/mountinfo")
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


def thread_ids(pid: int) -> list[int]:
    """The thread ids of `pid` (from /proc/PID/task); TraceTargetGone if none."""
    try:
        return sorted(int(t) for t in os.listdir(f"{proc.ROOT}/{pid}/task") if t.isdigit())
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
        with deferred_signals():
            self._close()

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
