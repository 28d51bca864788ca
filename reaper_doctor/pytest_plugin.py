"""pytest plugin: fail a test that leaks a child process, a zombie or a descriptor.

Off unless asked for (`pytest --reaper-doctor`, or `reaper_doctor = true`
in the ini file). Inactive, this module only adds its options and its
marker: nothing is read, nothing is slowed, and reaper_doctor.collect (let
alone psutil) is never imported.

Active, it samples the test process before the test's setup and after its
teardown, and reports what the test left behind (DESIGN.md "pytest plugin"):

- descriptors: (fd, link) pairs that were not there before, each described
  with its kind, open mode (fdinfo flags), socket addresses and state;
- live children: direct children, keyed by (pid, start time) so a reused
  PID is not mistaken for the old process (dask's resource-leak checker);
- zombies: children that exited and that nobody waited for.

A leak is reported only if it is still there after a grace period
(`--reaper-doctor-grace`, default 0.5 s, polled, with one gc.collect()):
a socket closed by a finalizer or a child still being reaped by a helper
thread is slow teardown, not a leak. Resources made by the setup of a
fixture broader than the test (module, session ...) belong to that fixture
and are checked at the end of the test whose teardown finalized it.

Shape after dask distributed's pytest_resourceleaks (pluggable checks, a
marker to allow a known leak, fail/warn switch, grace retry) and pytest's
own --lsof checker, which sees only paths and so misses sockets and pipes.
"""

from __future__ import annotations

import gc
import os
import shlex
import textwrap
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Iterable

import pytest

if TYPE_CHECKING:  # collect is imported only when the plugin is on
    from .model import FdDetail, ProcessInfo
    from .parse.procfs import StatLine

CHECKS = ("children", "zombies", "fds")
MODES = ("fail", "warn")
DEFAULT_GRACE_S = 0.5
MARKER = "reaper_doctor_allow"
# More PIDs than this allocated on the machine between two samples (other
# workloads fork too) and a full /proc walk is cheaper than probing each.
_MAX_PID_SPAN = 2048


class ReaperDoctorWarning(pytest.PytestWarning):
    """A test leaked a child process, a zombie or a descriptor (warn mode)."""

    __module__ = "reaper_doctor.pytest_plugin"


# ----------------------------------------------------------------------------
# Options: the only thing done when the plugin is off


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reaper-doctor", "reaper-doctor: leaked children, zombies, fds")
    group.addoption("--reaper-doctor", dest="reaper_doctor", action="store_true", default=None,
                    help="check every test for leaked child processes, zombies and "
                         "descriptors (ini: reaper_doctor = true).")
    group.addoption("--no-reaper-doctor", dest="reaper_doctor", action="store_false",
                    help="turn the check off even if the ini file turns it on.")
    group.addoption("--reaper-doctor-mode", choices=MODES, default=None,
                    help="fail: a leaking test errors in teardown (default); "
                         "warn: it passes with a ReaperDoctorWarning.")
    group.addoption("--reaper-doctor-checks", default=None, metavar="LIST",
                    help="comma-separated checks among children,zombies,fds "
                         "(default: all).")
    group.addoption("--reaper-doctor-grace", type=float, default=None, metavar="SECONDS",
                    help="how long a resource may take to go away after teardown "
                         f"before it counts as leaked (default {DEFAULT_GRACE_S}).")
    parser.addini("reaper_doctor", type="bool", default=False,
                  help="turn the reaper-doctor leak check on for every run.")
    parser.addini("reaper_doctor_mode", default="fail", help="fail or warn.")
    parser.addini("reaper_doctor_checks", default=",".join(CHECKS),
                  help="comma-separated checks among children,zombies,fds.")
    parser.addini("reaper_doctor_grace_s", default=str(DEFAULT_GRACE_S),
                  help="grace period in seconds before a resource counts as leaked.")


@dataclass(frozen=True)
class Settings:
    mode: str
    checks: frozenset[str]
    grace_s: float


def _settings(config: pytest.Config) -> Settings | None:
    """The settings when the plugin is on, None when it is off."""
    enabled = config.getoption("reaper_doctor")
    if enabled is None:
        enabled = config.getini("reaper_doctor")
    if not enabled:
        return None
    mode = config.getoption("reaper_doctor_mode") or config.getini("reaper_doctor_mode")
    if mode not in MODES:
        raise pytest.UsageError(f"reaper_doctor_mode: {mode!r} is not one of {', '.join(MODES)}")
    checks_text = (config.getoption("reaper_doctor_checks")
                   or config.getini("reaper_doctor_checks"))
    checks = _parse_checks(checks_text, "reaper-doctor checks")
    grace = config.getoption("reaper_doctor_grace")
    if grace is None:
        try:
            grace = float(config.getini("reaper_doctor_grace_s"))
        except ValueError:
            raise pytest.UsageError("reaper_doctor_grace_s: not a number of seconds") from None
    if grace < 0:
        raise pytest.UsageError("reaper-doctor grace: must be >= 0 seconds")
    return Settings(mode=mode, checks=checks, grace_s=grace)


def _parse_checks(items: str | Iterable[str], where: str) -> frozenset[str]:
    if isinstance(items, str):
        items = items.split(",")
    names = {i.strip() for i in items if i.strip()}
    if "all" in names:
        return frozenset(CHECKS)
    unknown = sorted(names - set(CHECKS))
    if unknown:
        raise pytest.UsageError(f"{where}: unknown check {', '.join(map(repr, unknown))} "
                                f"(choose among {', '.join(CHECKS)})")
    return frozenset(names)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*checks): reaper-doctor allows this test to leak these resources "
        f"({', '.join(CHECKS)}; no argument: all of them).")
    settings = _settings(config)
    if settings is None:
        return
    from .collect.proc import has_procfs

    if not has_procfs():
        # psutil could count descriptors elsewhere but not name them, nor
        # tell a zombie's exit status: better off than half right.
        config.issue_config_time_warning(
            ReaperDoctorWarning("reaper-doctor: no /proc here; the leak check is off"),
            stacklevel=2)
        return
    config.pluginmanager.register(LeakChecker(settings), "reaper-doctor-checker")


# ----------------------------------------------------------------------------
# Samples and leaks


@dataclass(frozen=True)
class Sample:
    """The test process at one moment: its descriptors and direct children."""

    fds: dict[int, str]                   # fd -> link text
    children: dict[int, StatLine]         # pid -> stat line (state, start time)
    last_pid: int | None                  # PID counter when the children were read


@dataclass
class Leaks:
    fds: dict[int, str] = field(default_factory=dict)
    children: list[StatLine] = field(default_factory=list)   # still running
    zombies: list[StatLine] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fds or self.children or self.zombies)


# Resource keys: ("fd", fd, link) or ("child", pid, start_ticks).
Key = tuple[str, int, Any]


@dataclass
class TestState:
    checks: frozenset[str]
    before: Sample
    released: set[Key] = field(default_factory=set)  # of broader fixtures finalized here
    failed: bool = False                              # setup or call already failed


_STATE = pytest.StashKey[TestState]()
_RESULT = pytest.StashKey[str]()


class LeakChecker:
    """Registered only when the plugin is on; holds the per-test states."""

    def __init__(self, settings: Settings) -> None:
        from .collect import fds, process, tasks

        self.fds, self.process, self.tasks = fds, process, tasks
        self.settings = settings
        self.pid = os.getpid()
        self.children_file: bool | None = None   # /proc/<pid>/task/*/children works
        self.last: Sample | None = None
        self.owned: dict[int, tuple[str, set[Key]]] = {}  # id(fixturedef) -> (name, keys)
        self.current: TestState | None = None
        self.checked = 0
        self.leaked: list[str] = []
        self.notes: list[str] = []   # leaks of tests that failed anyway

    # -- sampling ------------------------------------------------------------

    def sample(self) -> Sample:
        pid = os.getpid()
        fds = self.fds.fd_links(pid)
        children, last = self._children(pid)
        sample = Sample(fds=fds, children=children, last_pid=last)
        self.last = sample
        return sample

    def _children(self, pid: int) -> tuple[dict[int, StatLine], int | None]:
        if self.children_file is not False:
            pids = self.tasks.task_children(pid)
            self.children_file = pids is not None
            if pids is not None:
                return self.tasks.child_stats(pid, pids), None
        # No children file (CONFIG_PROC_CHILDREN off). Read the PID counter
        # first: any process created after it has a larger PID (modulo wrap).
        last = self.tasks.last_pid()
        if not self.tasks.has_children():
            return {}, last
        candidates: Iterable[int] | None = None
        previous = self.last
        if previous is not None and previous.last_pid is not None and last is not None:
            if 0 <= last - previous.last_pid <= _MAX_PID_SPAN:
                candidates = {*previous.children, *range(previous.last_pid + 1, last + 1)}
        # A walk of every process otherwise: the first time, after a wrap,
        # or when the machine forked a lot meanwhile.
        return self.tasks.child_stats(pid, candidates), last

    def leaks(self, state: TestState) -> Leaks:
        after = self.sample()
        before = state.before
        owned = set().union(*(keys for _, keys in self.owned.values()))
        found = Leaks()
        if "fds" in state.checks:
            for fd, link in after.fds.items():
                key: Key = ("fd", fd, link)
                if key in owned:
                    continue
                if before.fds.get(fd) != link or key in state.released:
                    found.fds[fd] = link
        old = {(st.pid, st.start_ticks): st for st in before.children.values()}
        for st in after.children.values():
            key = ("child", st.pid, st.start_ticks)
            if key in owned:
                continue
            was = old.get((st.pid, st.start_ticks))
            released = key in state.released
            if st.state == "Z":
                if "zombies" in state.checks and (was is None or was.state != "Z" or released):
                    found.zombies.append(st)
            elif "children" in state.checks and (was is None or released):
                found.children.append(st)
        return found

    def _keys(self, sample: Sample) -> set[Key]:
        return {*(("fd", fd, link) for fd, link in sample.fds.items()),
                *(("child", st.pid, st.start_ticks) for st in sample.children.values())}

    # -- hooks ---------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        checks = self.settings.checks
        bad_marker = None
        marker = item.get_closest_marker(MARKER)
        if marker is not None:
            try:
                allowed = (_parse_checks(marker.args, f"@pytest.mark.{MARKER}")
                           if marker.args else frozenset(CHECKS))
            except pytest.UsageError as e:
                bad_marker, allowed = str(e), frozenset()
            checks = checks - allowed
        self.current = None
        if checks and os.getpid() == self.pid:
            self.current = TestState(checks=checks, before=self.sample())
            item.stash[_STATE] = self.current
        result = yield
        # Failing before the yield would skip the other plugins' setup
        # wrappers (capture, logging) and break their teardown.
        if bad_marker:
            pytest.fail(bad_marker, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
        # A fixture broader than the test keeps its resources past this
        # test's teardown on purpose: note what its setup made.
        if self.current is None or fixturedef.scope == "function":
            return (yield)
        before = self._keys(self.sample())
        result = yield
        made = self._keys(self.sample()) - before
        name, keys = self.owned.get(id(fixturedef), (fixturedef.argname, set()))
        self.owned[id(fixturedef)] = (name, keys | made)
        return result

    @pytest.hookimpl
    def pytest_fixture_post_finalizer(self, fixturedef: Any, request: Any) -> None:
        owned = self.owned.pop(id(fixturedef), None)
        if owned is not None and self.current is not None:
            self.current.released |= owned[1]  # they must be gone by the end of this test

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        state = item.stash.get(_STATE, None)
        if state is not None:
            self._amend(report, state, item, call.when)
        return report

    def _amend(self, report: pytest.TestReport, state: TestState, item: pytest.Item,
               when: str) -> None:
        if when != "teardown":
            state.failed = state.failed or report.failed
            return
        block = item.stash.get(_RESULT, "")
        info: dict[str, Any] = {"checks": sorted(state.checks), "leaked": bool(block)}
        report.reaper_doctor = info  # type: ignore[attr-defined]  # travels to an xdist controller
        if not block or self.settings.mode != "fail":
            return
        if report.passed and not state.failed:
            report.outcome = "failed"   # an error in teardown, with the block as its text
            report.longrepr = block
        else:
            # The test has already failed: no second error for it. Its
            # traceback (kept in sys.last_traceback for post-mortem) may be
            # what holds these open; the summary shows them, as a note.
            info["note"] = block

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> Generator[None, None, None]:
        # tryfirst: the outermost wrapper, so this runs after every fixture
        # finalizer and every other plugin's teardown.
        try:
            result = yield
        except BaseException:
            self._after(item, may_raise=False)
            raise
        self._after(item, may_raise=True)
        return result

    def _after(self, item: pytest.Item, *, may_raise: bool) -> None:
        state = item.stash.get(_STATE, None)
        self.current = None
        if state is None or os.getpid() != self.pid:
            return  # a forked child running pytest code: not the process we watch
        found = self._leaks_after_grace(state)
        if not found:
            return
        block = self.render(found, item)
        item.stash[_RESULT] = block
        if self.settings.mode == "warn":
            # Inside the teardown call: with -W error it becomes a teardown
            # error, unless the teardown has already raised its own.
            try:
                item.warn(ReaperDoctorWarning(block))
            except Exception:
                if may_raise:
                    raise

    def _leaks_after_grace(self, state: TestState) -> Leaks:
        found = self.leaks(state)
        deadline = time.monotonic() + self.settings.grace_s
        interval = 0.01
        collected = False
        while found and time.monotonic() < deadline:
            if not collected:
                # An object in a reference cycle closes its fd only at gc.
                gc.collect()
                collected = True
            else:
                time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                interval = min(interval * 2, 0.1)
            found = self.leaks(state)
        return found

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Counted from the reports, so that under xdist the controller sums
        # what its workers checked (the attribute travels with the report).
        info = getattr(report, "reaper_doctor", None)
        if report.when != "teardown" or not isinstance(info, dict):
            return
        self.checked += 1
        if info.get("leaked"):
            self.leaked.append(report.nodeid)
        if info.get("note"):
            self.notes.append(info["note"])

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if terminalreporter.config.getoption("collectonly", False):
            return
        s = self.settings
        terminalreporter.write_sep(
            "-", f"reaper-doctor: {self.checked} test{_s(self.checked)} checked, "
                 f"{len(self.leaked)} leaked (mode {s.mode}; checks "
                 f"{', '.join(c for c in CHECKS if c in s.checks)}; grace {s.grace_s:g} s)")
        for nodeid in self.leaked[:20]:
            terminalreporter.write_line(f"  leaked: {nodeid}")
        if len(self.leaked) > 20:
            terminalreporter.write_line(f"  ... and {len(self.leaked) - 20} more")
        for note in self.notes:
            terminalreporter.write_line("left open by a test that failed (its traceback may "
                                        "hold them):")
            terminalreporter.write_line(textwrap.indent(note, "  "))

    # -- the report ----------------------------------------------------------

    def render(self, found: Leaks, item: pytest.Item) -> str:
        pid = os.getpid()
        details = self.fds.describe_fds(pid, found.fds)
        described = {d.fd for d in details}
        counts = []
        if found.fds:
            counts.append(f"{len(found.fds)} descriptor{_s(len(found.fds))}")
        if found.children:
            counts.append(f"{len(found.children)} child process{_es(len(found.children))}")
        if found.zombies:
            counts.append(f"{len(found.zombies)} zombie{_s(len(found.zombies))}")
        lines = [f"reaper-doctor: {item.nodeid} leaked {', '.join(counts)}"]
        lines += [f"  {_describe_fd(d)}" for d in details]
        lines += [f"  fd {fd:<5} {link}  (closed while being described)"
                  for fd, link in sorted(found.fds.items()) if fd not in described]
        for st in found.children:
            lines.append("  " + _describe_child(st, self.process.describe_process(st.pid)))
        for st in found.zombies:
            lines.append("  " + _describe_zombie(st, self.process.describe_process(st.pid)))
        lines.append("  hint: " + _hint(details, found))
        kinds = [c for c in CHECKS if getattr(found, c)]
        allow = ", ".join('"%s"' % k for k in kinds)
        lines.append(f"  a known leak? @pytest.mark.{MARKER}({allow})")
        return "\n".join(lines)


def _describe_fd(d: FdDetail) -> str:
    is_socket = d.inet is not None or d.unix is not None or d.kind == "socket"
    head = f"fd {d.fd:<5} {'socket' if is_socket else d.kind:<9}"
    mode = f"mode {d.mode}" if d.mode else None
    if d.inet is not None:
        s = d.inet
        where = _addr(s.local)
        if s.state != "LISTEN" and s.remote[1]:
            where += f" -> {_addr(s.remote)}"
        family = "IPv6" if s.proto.endswith("6") else "IPv4"
        return f"{head} {s.proto.rstrip('6').upper()}/{family} {where} {s.state}"
    if d.unix is not None:
        u = d.unix
        return f"{head} unix {u.type} {u.path or '(unnamed)'} {u.state}"
    if d.kind == "socket":
        return f"{head} {d.socket_family or 'family unknown'} {d.link} (in no tcp/udp/unix table)"
    if d.kind == "pipe":
        end = {"r": "read end", "w": "write end"}.get((d.mode or "").split(",")[0], "")
        other = (f"; other fds on it: {', '.join(map(str, d.peer_fds))}" if d.peer_fds
                 else "; the other end is not in this process")
        return f"{head} {d.link} {end}{other}"
    if d.kind in ("file", "directory", "device", "fifo"):
        extra = ", ".join(x for x in (mode, f"offset {d.offset}" if d.offset else None) if x)
        return f"{head} {d.link}" + (f"  ({extra})" if extra else "")
    return f"{head} {d.link}" + (f"  ({mode})" if mode else "")


def _addr(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _command(info: ProcessInfo | None, st: StatLine) -> str:
    if info is not None and info.cmdline:
        text = shlex.join(info.cmdline)
        return text if len(text) <= 120 else text[:117] + "..."
    return st.comm


def _describe_child(st: StatLine, info: ProcessInfo | None) -> str:
    age = f"running for {info.age_s:.1f} s" if info and info.age_s is not None else "running"
    return (f"child     pid {st.pid}  {_command(info, st)}  "
            f"({age}; never waited for nor killed)")


def _describe_zombie(st: StatLine, info: ProcessInfo | None) -> str:
    status = info.exit_status.describe() if info and info.exit_status else "status unknown"
    return (f"zombie    pid {st.pid}  {st.comm}  ({status}; exited, but nobody called "
            f"wait() on it)")


def _hint(details: list[FdDetail], found: Leaks) -> str:
    codes = []
    if any(d.inet or d.unix or d.kind == "socket" for d in details):
        codes.append("reaper-doctor explain RD201 (sockets never closed)")
    if any(not (d.inet or d.unix or d.kind == "socket") for d in details):
        codes.append("reaper-doctor explain RD203 (descriptors never closed)")
    if found.zombies or found.children:
        codes.append("reaper-doctor explain RD101 (children never waited for)")
    return "; ".join(codes)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _es(n: int) -> str:
    return "" if n == 1 else "es"
