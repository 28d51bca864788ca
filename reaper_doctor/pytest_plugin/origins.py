"""Where each descriptor and child was made: creation events with the raw
frames that made them, matched to leaks only when a leak is reported.

While the plugin runs, the functions that make descriptors and processes
are wrapped; each notes what it made, exactly:

| wrapped | notes |
|---|---|
| `open` (builtins, io), `os.open` | the descriptor of what it returns |
| `socket.socket.__init__` (every socket: accept, socketpair too) | its descriptor |
| `os.pipe`, `os.pipe2`, `os.dup`, `os.openpty` | the descriptors returned |
| `subprocess.Popen._execute_child` | the child's PID, its command line |
| `os.fork`, `os.forkpty`, `os.posix_spawn[p]` | the PID returned |
| `os.system` | the command line and the PID counter (its shell's PID is unknown) |

Python's audit hooks (PEP 578) report most of these too (`open`,
`socket.__new__`, `subprocess.Popen`, `os.fork`, `os.posix_spawn`,
`os.system`; os.pipe, os.dup and os.openpty raise none), but they carry no
descriptor and no PID, and an audit hook, which cannot be removed, runs for
every audited event of the process: pytest alone raises some 25 per test
(`builtins.id`, `object.__getattr__`, `os.putenv`), which made the hook the
plugin's largest cost. `reaper_doctor_origins = audit` adds the hook, for
code that called these functions through references taken before the
plugin started; its events are matched by path and PID order.

Recording is cheap: an event keeps its code objects and line numbers (no
frame, which would keep the caller's locals alive) and, for process
creation, the PID counter of the moment, so that a child's PID tells which
event came just before it. Formatting waits for a report. Descriptors made
in C (epoll, eventfd, a library's own) have no origin; the report says so.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections import deque
from typing import Any, Callable, Iterable, NamedTuple

MAX_FRAMES = 40
SPAWNS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                    "os.system"})
WATCHED = frozenset({"open", "socket.__new__", *SPAWNS})
# ((code object, offset of its last instruction), ...), innermost first. Not
# f_lineno: computing it walks the code's line table, which costs more than
# the rest of the recording; the report computes it for the frames it shows.
Frames = tuple[tuple[Any, int], ...]


class Event(NamedTuple):
    kind: str            # the audit event, or "os.pipe" / "os.dup" / "os.openpty"
    seq: int             # order of recording
    test: str | None     # node id of the test running (None: between tests)
    frames: Frames
    fds: tuple[int, ...] = ()            # descriptors known at once (pipe, dup, fdopen)
    path: str | None = None              # open(path)
    sock: Any = None                     # weakref to the socket object
    argv: tuple[str, ...] | None = None  # spawns with a command line
    last_pid: int | None = None          # spawns: the PID counter just before
    pid: Any = None                      # spawns: the child's PID, or a weakref to its Popen

    def child_pid(self) -> int | None:
        if self.pid is None or isinstance(self.pid, int):
            return self.pid
        popen = self.pid()
        return getattr(popen, "pid", None)


_getframe = sys._getframe

# An Event made without its generated __new__ (a Python function: a third
# of what recording an open() costs).
_new_event = tuple.__new__


class Origin(NamedTuple):
    """A leaked resource's creation, once matched."""

    event: Event
    relation: str = "made"   # "made", "started", "forked", "orphan"


class Recorder:
    """Notes creation events while the plugin runs. An audit hook cannot be
    removed: after stop() it returns at its first test."""

    def __init__(self, last_pid: Callable[[], int | None], *, audit: bool = False) -> None:
        self.last_pid = last_pid
        self.audit = audit
        self.active = False
        self.busy = False          # our own reads raise events too
        self.seq = 0
        self.test: Any = None    # the item running (or its node id; None: between tests)
        self._told = ""          # the node id pytest gave for a test of unknown id ("")
        self.events: list[Event] = []
        # Spawns are few and a grandchild may come home tests later.
        self.spawns: deque[Event] = deque(maxlen=256)
        self._saved: dict[tuple[Any, str], Callable[..., Any]] = {}
        self._previous: Recorder | None = None

    # -- installing ----------------------------------------------------------

    def start(self) -> None:
        if not self._saved:
            wrappers: dict[tuple[Any, str], Callable[..., Any]] = {}
            for name in ("pipe", "pipe2", "dup", "openpty"):
                wrappers[os, name] = self._wrap_fds
            for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
                wrappers[os, name] = self._wrap_spawn
            if not self.audit:
                import builtins
                import io
                import socket
                import subprocess

                wrappers[builtins, "open"] = wrappers[io, "open"] = self._wrap_open
                wrappers[os, "open"] = self._wrap_fds
                wrappers[socket.socket, "__init__"] = self._wrap_socket
                wrappers[subprocess.Popen, "_execute_child"] = self._wrap_popen
                wrappers[os, "system"] = self._wrap_system
            made: dict[Any, Callable[..., Any]] = {}   # io.open is builtins.open
            for (owner, name), wrap in wrappers.items():
                original = getattr(owner, name, None)
                if original is None:
                    continue
                if original not in made:
                    made[original] = wrap(name, original)
                self._saved[owner, name] = original
                setattr(owner, name, made[original])
        if self.audit and not getattr(Recorder, "_hooked", False):
            sys.addaudithook(_hook)
            Recorder._hooked = True  # type: ignore[attr-defined]
        global _RECORDER
        self._previous = _RECORDER   # an inner pytest run in this process has its own
        _RECORDER = self
        self.active = True

    def stop(self) -> None:
        global _RECORDER
        if _RECORDER is self:
            _RECORDER = self._previous
        self.active = False
        for (owner, name), original in self._saved.items():
            setattr(owner, name, original)
        self._saved.clear()
        self.events.clear()
        self.spawns.clear()

    def _on(self) -> bool:
        return self.active and self.test is not None and not self.busy

    def _wrap_fds(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self
        kind = f"os.{'pipe' if name == 'pipe2' else name}"

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True   # pytest: the error is the caller's
            result = original(*args, **kwargs)
            # (_on(), inlined: this runs for every descriptor a test makes.)
            if recorder.active and recorder.test is not None and not recorder.busy:
                recorder.note(kind, _getframe(1),
                              tuple(result) if isinstance(result, tuple) else (result,))
            return result

        return _named(wrapper, name, original)

    def _wrap_open(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True   # pytest: the error is the caller's
            result = original(*args, **kwargs)
            if recorder.active and recorder.test is not None and not recorder.busy:
                try:
                    fd = result.fileno()
                except (AttributeError, ValueError, OSError):
                    return result
                recorder.note("open", _getframe(1), (fd,))
            return result

        return _named(wrapper, name, original)

    def _wrap_socket(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def __init__(sock: Any, *args: Any, **kwargs: Any) -> None:
            __tracebackhide__ = True   # pytest: the error is the caller's
            original(sock, *args, **kwargs)
            if recorder.active and recorder.test is not None and not recorder.busy:
                fd = sock.fileno()
                if fd >= 0:
                    recorder.note("socket", _getframe(1), (fd,))

        return _named(__init__, name, original)

    def _wrap_popen(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def _execute_child(popen: Any, args: Any, *rest: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True   # pytest: the error is the caller's
            if not recorder._on():
                return original(popen, args, *rest, **kwargs)
            result = original(popen, args, *rest, **kwargs)
            pid = getattr(popen, "pid", None)
            recorder.note("subprocess.Popen", sys._getframe(1), argv=_argv(args),
                          last_pid=_before(pid), pid=pid)
            return result

        return _named(_execute_child, name, original)

    def _wrap_system(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def system(command: Any) -> int:
            __tracebackhide__ = True   # pytest: the error is the caller's
            if recorder._on():
                recorder.note("os.system", sys._getframe(1), last_pid=recorder.last_pid(),
                              argv=("/bin/sh", "-c", os.fsdecode(command)))
            return int(original(command))

        return _named(system, name, original)

    def _wrap_spawn(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self
        kind = f"os.{'posix_spawn' if name == 'posix_spawnp' else name}"

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True   # pytest: the error is the caller's
            if not recorder._on():
                return original(*args, **kwargs)
            recorder.busy = True   # the audit event of this call is noted here, with the PID
            try:
                result = original(*args, **kwargs)
            finally:
                recorder.busy = False
            pid = result[0] if isinstance(result, tuple) else result
            if pid:   # 0: this is the forked child
                argv = _argv(args[1]) if kind == "os.posix_spawn" and len(args) > 1 else None
                recorder.note(kind, sys._getframe(1), argv=argv, last_pid=_before(pid), pid=pid)
            return result

        return _named(wrapper, name, original)

    # -- recording -----------------------------------------------------------

    def note(self, kind: str, frame: Any, fds: tuple[int, ...] = (), path: str | None = None,
             sock: Any = None, argv: tuple[str, ...] | None = None,
             last_pid: int | None = None, pid: Any = None) -> None:
        # Called for every descriptor and process a test makes: the frames
        # are kept raw, formatted only for a report.
        frames = []
        boundary = _BOUNDARY
        depth = MAX_FRAMES
        while frame is not None and depth:
            code = frame.f_code
            if code is boundary:
                break   # pytest's machinery from here up: nobody's origin
            frames.append((code, frame.f_lasti))
            frame = frame.f_back
            depth -= 1
        self.seq += 1
        test = self.test
        if not isinstance(test, str):
            test = test.nodeid   # the item
        elif not test:
            # A test the recorder was not told of: pytest says which, the same
            # until the next take().
            test = self._told = self._told or _current_test()
        event = _new_event(Event, (kind, self.seq, test, tuple(frames), fds, path, sock, argv,
                                   last_pid, pid))
        self.events.append(event)
        if kind in SPAWNS:
            self.spawns.append(event)

    def on_event(self, event: str, args: tuple[Any, ...]) -> None:
        self.busy = True
        try:
            frame = sys._getframe(2)
            if event == "open":
                path = args[0]
                if isinstance(path, int):
                    self.note(event, frame, fds=(path,))
                else:
                    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else None
                    if text is not None and not os.path.isabs(text):
                        text = os.path.abspath(text)
                    self.note(event, frame, path=text)
            elif event == "socket.__new__":
                try:
                    ref = weakref.ref(args[0])
                except TypeError:
                    ref = None
                self.note(event, frame, sock=ref)
            else:
                argv: tuple[str, ...] | None = None
                pid = None
                if event in ("subprocess.Popen", "os.posix_spawn", "os.spawn"):
                    argv = _argv(args[1] if len(args) > 1 else None)
                elif event == "os.system" and args:
                    argv = ("/bin/sh", "-c", os.fsdecode(args[0]))
                if event == "subprocess.Popen":
                    # Raised in Popen._execute_child: its `self` will know the PID.
                    popen = frame.f_locals.get("self")
                    try:
                        pid = weakref.ref(popen) if popen is not None else None
                    except TypeError:
                        pid = None
                self.note(event, frame, argv=argv, last_pid=self.last_pid(), pid=pid)
        finally:
            self.busy = False

    def take(self) -> list[Event]:
        """The events of the test that ended, and forget them: until the
        next test is set, nothing is recorded (the check's own reads)."""
        events, self.events = self.events, []
        self._told = ""
        self.test = None
        return events


_RECORDER: Recorder | None = None


def _hook_dispatch_code() -> Any:
    """The code of pluggy's hook dispatch: every test, fixture and hook
    runs below a frame of it, and above it lies only pytest's machinery
    (some 30 frames a walk would otherwise note for every event)."""
    for name in ("pluggy._execution", "pluggy._callers"):   # pluggy >= 1.6, before
        code = getattr(getattr(sys.modules.get(name), "_multicall", None), "__code__", None)
        if code is not None:
            return code
    return None


_BOUNDARY = _hook_dispatch_code()


def _current_test() -> str:
    """The test running, as pytest says in PYTEST_CURRENT_TEST ("<node id>
    (setup)"): for the first test, whose node id the recorder is not told."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]


def _before(pid: Any) -> int | None:
    """The PID counter just before a spawn whose PID is known: what the
    child and its descendants were given comes after it (read from
    /proc/loadavg only where the PID is unknown, as for os.system)."""
    return pid - 1 if isinstance(pid, int) and pid > 1 else None


def _named(wrapper: Callable[..., Any], name: str, original: Callable[..., Any]
           ) -> Callable[..., Any]:
    wrapper.__name__ = name
    wrapper.__qualname__ = getattr(original, "__qualname__", name)
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    return wrapper


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in WATCHED:
        return
    recorder = _RECORDER
    if recorder is None or recorder.test is None or not recorder.active or recorder.busy:
        return
    try:
        recorder.on_event(event, args)
    except Exception:
        pass  # an audit hook that raises would abort the caller's operation


def _argv(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, (str, bytes, os.PathLike)):
        return (os.fsdecode(value),)
    try:
        return tuple(os.fsdecode(a) for a in value)
    except TypeError:
        return None


# ----------------------------------------------------------------------------
# Matching: which event made which leaked descriptor or child


def match_fds(events: Iterable[Event], links: dict[int, str]) -> dict[int, Origin]:
    """The creating event of each descriptor of `links` ({fd: link text}).
    Events are in creation order; the latest that names an fd wins (its
    number may have been reused). An open by path claims the lowest
    unclaimed descriptor on that path, as the kernel allocates lowest first."""
    found: dict[int, Origin] = {}
    by_path: list[Event] = []
    for event in events:
        if event.fds:
            for fd in event.fds:
                if fd in links:
                    found[fd] = Origin(event)
        elif event.sock is not None:
            sock = event.sock()
            fd = sock.fileno() if sock is not None else -1
            if fd in links:
                found[fd] = Origin(event)
        elif event.path is not None:
            by_path.append(event)
    on_path: dict[str, list[int]] = {}
    for fd in sorted(links, reverse=True):
        if fd not in found:
            on_path.setdefault(links[fd], []).append(fd)
    for event in by_path:
        fds = on_path.get(event.path or "")
        if fds:
            found[fds.pop()] = Origin(event)
    return found


def match_children(spawns: Iterable[Event], children: dict[int, tuple[str, ...]],
                   own_argv: tuple[str, ...]) -> dict[int, Origin]:
    """The event that made each child ({pid: command line}): the one that
    knows its PID. Otherwise, a child was made after an event whose PID
    counter is below its PID: the latest such event, of unknown PID, whose
    command line is the child's started it (a fork runs our own command
    line); failing that, the child is the orphan of a process the latest
    such event started."""
    ordered = sorted(spawns, key=lambda e: e.seq)
    pids = [e.child_pid() for e in ordered]
    by_pid = {pid: e for pid, e in zip(pids, ordered) if pid is not None}
    found: dict[int, Origin] = {}
    for pid, argv in children.items():
        if pid in by_pid:
            event = by_pid[pid]
            found[pid] = Origin(event, "forked" if event.kind in ("os.fork", "os.forkpty")
                                else "started")
            continue
        before = [e for e in ordered if e.last_pid is None or _pid_after(pid, e.last_pid)]
        if not before:
            continue
        for event in reversed([e for e in before if e.child_pid() is None]):
            if event.kind in ("os.fork", "os.forkpty"):
                if argv == own_argv or not argv:
                    found[pid] = Origin(event, "forked")
                    break
            elif event.argv and _same_command(event.argv, argv):
                found[pid] = Origin(event, "started")
                break
        else:
            found[pid] = Origin(before[-1], "orphan")
    return found


def _pid_after(pid: int, last_pid: int) -> bool:
    # PIDs grow until they wrap at pid_max: a PID far below the counter is
    # taken as allocated after a wrap.
    return pid > last_pid or last_pid - pid > 1 << 21


def _same_command(spawned: tuple[str, ...], running: tuple[str, ...]) -> bool:
    if spawned == running:
        return True
    if not running or not spawned:
        return False
    # argv[0] may be rewritten (a path resolved, an interpreter's own name).
    return (os.path.basename(spawned[0]) == os.path.basename(running[0])
            and spawned[1:] == running[1:])


# ----------------------------------------------------------------------------
# Frames, for a person


class Place(NamedTuple):
    filename: str
    lineno: int
    function: str
    code: Any


def places(frames: Frames) -> list[Place]:
    return [Place(code.co_filename, _line(code, lasti),
                  getattr(code, "co_qualname", code.co_name), code)
            for code, lasti in frames]


def _line(code: Any, lasti: int) -> int:
    """The line of the instruction at byte offset `lasti` (what f_lineno says)."""
    line = code.co_firstlineno
    for start, end, number in code.co_lines():
        if start <= lasti < end:
            return number if number is not None else line
        if number is not None:
            line = number
    return line


class Library:
    """Tells the maintainer's code from the interpreter's, the installed
    packages' and pytest's own."""

    def __init__(self, extra_dirs: Iterable[str] = ()) -> None:
        import sysconfig

        paths = sysconfig.get_paths()
        dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        dirs |= {os.path.dirname(__file__), *extra_dirs}
        for name in ("pytest", "_pytest", "pluggy"):
            module = sys.modules.get(name)
            if module is not None and getattr(module, "__file__", None):
                dirs.add(os.path.dirname(module.__file__ or ""))
        self.prefixes = tuple(sorted(os.path.join(d, "") for d in dirs if d))

    def __contains__(self, filename: str) -> bool:
        return (filename.startswith("<") or filename.startswith(self.prefixes)
                or "/site-packages/" in filename)


def user_places(frames: Frames, library: Library) -> list[Place]:
    """The frames in the maintainer's code, innermost first; if there are
    none, the innermost frame outside pytest and the plugin."""
    all_places = places(frames)
    mine = [p for p in all_places if p.filename not in library]
    return mine or all_places[:1]
