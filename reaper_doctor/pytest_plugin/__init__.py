"""pytest plugin: fail a test that leaks a child process, a zombie or a descriptor.

Off unless asked for (`pytest --reaper-doctor`, or `reaper_doctor = true`
in the ini file). Inactive, this module only adds its options and its
marker: nothing is read, nothing is slowed, and reaper_doctor.collect (let
alone psutil) is never imported.

Active, it samples the test process after each test's teardown (and once
before the first test): one test's after is the next one's before, since
nothing runs between two tests. It reports what each test left behind
(diff.py, report.py):

- descriptors, keyed by (fd, st_dev, st_ino). The count comes in one
  stat() of /proc/self/fd; the set is read again (a listdir and one fstat
  per descriptor) only when the count has changed, and a link is read only
  for what is reported. A test that closes a descriptor it did not open and
  leaks a new one in its place, both outside Python's view, goes unseen;
- live children and zombies, keyed by (pid, start time). A child counts
  only on the test that started it: one that exits during a later test is
  listed as the exited child of its test, not blamed again;
- where each was made (origins.py: audit hooks, the raw frames kept, the
  first frame in the suite's own code shown).

The test process is a child subreaper while the plugin runs, so the
orphans of its children come home and are reported; what tests left
running is killed and reaped at the end of the session, and said so.

A leak is reported only if it is still there once what is on its way out
has gone: one gc.collect() (a file closed only then is reported as such),
then, within `--reaper-doctor-grace` (default 0.5 s), polls while threads
the test started still run or the descriptor count is falling. Resources
made by the setup of a fixture broader than the test belong to that
fixture and are checked at the end of the test whose teardown finalized it.
What a suite keeps on purpose is not a leak: reaper_doctor.adopt(obj), the
ini patterns `reaper_doctor_allow_paths` / `reaper_doctor_allow_commands`,
and the first-use baseline (a resource made by a helper on first use is
taken as a cache; the same line making another in a later test is a leak).

Shape after dask distributed's pytest_resourceleaks (pluggable checks, a
marker to allow a known leak, fail/warn switch, grace retry) and pytest's
own --lsof checker, which sees only paths and so misses sockets and pipes.
"""

from __future__ import annotations

import fnmatch
import gc
import linecache
import os
import resource
import signal
import textwrap
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator, Iterable, TypeVar

import pytest

from .diff import CHECKS, ChildKey, FdKey, Key, Leaks, Sample, child_keys, diff, fd_keys
from .origins import Event, Library, Origin, Recorder, match_children, match_fds, user_places
from .report import (MARKER, Entry, block, describe_child, describe_fd, describe_zombie,
                     fd_kind, s as _s)

if TYPE_CHECKING:
    from ..parse.procfs import StatLine

MODES = ("fail", "warn")
DEFAULT_GRACE_S = 0.5
# More PIDs than this allocated on the machine between two samples (other
# workloads fork too) and a full /proc walk is cheaper than probing each.
_MAX_PID_SPAN = 2048
_SETUP_CLASS = "_unittest_setUpClass_fixture_"
T = TypeVar("T")


class ReaperDoctorWarning(pytest.PytestWarning):
    """A test leaked a child process, a zombie or a descriptor (warn mode),
    or could not be checked."""

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
                    help="the longest wait for what is on its way out after teardown "
                         f"(threads the test started, a falling count; default "
                         f"{DEFAULT_GRACE_S}).")
    parser.addini("reaper_doctor", type="bool", default=False,
                  help="turn the reaper-doctor leak check on for every run.")
    parser.addini("reaper_doctor_mode", default="fail", help="fail or warn.")
    parser.addini("reaper_doctor_checks", default=",".join(CHECKS),
                  help="comma-separated checks among children,zombies,fds.")
    parser.addini("reaper_doctor_grace_s", default=str(DEFAULT_GRACE_S),
                  help="longest wait in seconds for what is on its way out.")
    parser.addini("reaper_doctor_allow_paths", type="linelist", default=[],
                  help="descriptors kept on purpose: glob patterns on their path or link "
                       "text (pipe:[*], socket:[*] ...).")
    parser.addini("reaper_doctor_allow_commands", type="linelist", default=[],
                  help="children kept on purpose: glob patterns on their command line.")
    parser.addini("reaper_doctor_first_use", type="bool", default=True,
                  help="a resource a helper makes on first use is a cache, reported only "
                       "when the same line makes another (default true).")
    parser.addini("reaper_doctor_origins", default="true",
                  help="record where descriptors and children are made: true (default), "
                       "false, or audit (also Python's audit hook; slower).")


@dataclass(frozen=True)
class Settings:
    mode: str
    checks: frozenset[str]
    grace_s: float
    allow_paths: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()
    first_use: bool = True
    origins: bool | str = True    # False, True (wrappers) or "audit" (and the audit hook)


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
    return Settings(mode=mode, checks=checks, grace_s=grace,
                    allow_paths=tuple(config.getini("reaper_doctor_allow_paths")),
                    allow_commands=tuple(config.getini("reaper_doctor_allow_commands")),
                    first_use=bool(config.getini("reaper_doctor_first_use")),
                    origins=_origins(config.getini("reaper_doctor_origins")))


def _origins(value: str) -> bool | str:
    text = str(value).strip().lower()
    if text in ("audit",):
        return "audit"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise pytest.UsageError(f"reaper_doctor_origins: {value!r} is not true, false or audit")


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
    from ..collect.proc import has_procfs

    if not has_procfs():
        # psutil could count descriptors elsewhere but not name them, nor
        # tell a zombie's exit status: better off than half right.
        config.issue_config_time_warning(
            ReaperDoctorWarning("reaper-doctor: no /proc here; the leak check is off"),
            stacklevel=2)
        return
    checker = LeakChecker(settings, str(config.rootpath))
    config.pluginmanager.register(checker, "reaper-doctor-checker")
    config.pluginmanager.register(_SetupEnd(checker), "reaper-doctor-setup-end")


class _SetupEnd:
    """The end of a test's setup, where the last fixture's setup ends: a
    second plugin object, since the checker's own setup hook runs first."""

    def __init__(self, checker: LeakChecker) -> None:
        self.checker = checker

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.checker._close_interval()


# ----------------------------------------------------------------------------
# One test's check


class LeakCheck:
    """One test's check (a plain class: one is made per test)."""

    __slots__ = ("checks", "before", "error", "started_ticks", "threads", "released",
                 "released_by", "ran", "failed")

    def __init__(self, checks: frozenset[str], before: Sample | None = None,
                 started_ticks: float = 0.0, threads: int = 0) -> None:
        self.checks = checks
        self.before = before
        self.error: str | None = None          # the before sample failed
        self.started_ticks = started_ticks     # boot time, clock ticks
        self.threads = threads                 # alive when it started
        self.released: set[Key] = set()        # of broader fixtures finalized here
        self.released_by: list[tuple[str, set[Key]]] = []
        self.ran = False                       # its call phase ran
        self.failed = False                    # setup or call already failed




_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _boot_ticks() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS_PER_S


class LeakChecker:
    """Registered only when the plugin is on; holds the per-test checks."""

    def __init__(self, settings: Settings, rootpath: str = "") -> None:
        from ..collect import adopted, fds, process, tasks
        from ..system.lifecycle import become_subreaper

        self.fds, self.process, self.tasks = fds, process, tasks
        self.adopted = adopted
        self.settings = settings
        self.rootpath = rootpath
        self.pid = os.getpid()
        self.subreaper = become_subreaper()
        self.fd_count = fds.OwnFdCount()
        self.children_file: bool | None = None   # /proc/<pid>/task/*/children works
        self.full: tuple[int | None, dict[int, FdKey]] | None = None  # last full fd read
        self.last: Sample | None = None
        self.owned: dict[int, tuple[str, set[Key]]] = {}  # id(fixturedef) -> (name, keys)
        self.origins: dict[Key, Origin] = {}  # resources still open, made earlier
        self.ledger: dict[ChildKey, str] = {}  # children seen new -> the test that made them
        self.first_use: dict[tuple[str, int], str] = {}   # (file, line) -> its first test
        self.kept: set[Key] = set()
        self.current: LeakCheck | None = None
        self.checked = 0
        self.leaked: list[str] = []
        self.notes: list[str] = []         # leaks of tests that failed anyway
        self.session_notes: list[str] = []
        self.pending_notes: list[str] = []   # for the test being checked
        self.argv: tuple[str, ...] | None = None
        self.fixture_codes: dict[Any, str] = {}   # broader fixtures' code -> label
        self._owned_keys: set[Key] | None = None   # owned and kept, all together
        self._interval: tuple[Any, set[Key]] | None = None   # a broader fixture's setup
        self.allowed: dict[str, frozenset[str]] = {}   # node id -> what its marker allows
        self.bad_markers: dict[str, str] = {}           # node id -> what is wrong with it
        self.results: dict[str, tuple[LeakCheck, str, bool, list[str]]] = {}
        self.recorder: Recorder | None = None
        # Built now: with the descriptor table full, nothing can be imported.
        self.library = Library()
        if settings.origins:
            self.recorder = Recorder(tasks.last_pid, audit=settings.origins == "audit")
            self.recorder.start()

    # -- sampling ------------------------------------------------------------

    def sample(self, *, full: bool = False, keep: bool = True,
               children_of: Sample | None = None) -> Sample:
        """The descriptors (read again only when their count has changed,
        or `full`) and the children (those of `children_of` if given).
        Samples taken inside other plugins' wrappers (`keep` False) are not
        kept for the next: there, capture has swapped the standard
        descriptors for its own files."""
        pid = self.pid
        count = self.fd_count()
        known = self.full
        if full or not keep or count is None or known is None or known[0] != count:
            known = (count, self.fds.own_fd_keys(count))
            if keep:
                self.full = known
        if children_of is not None:
            children, last = children_of.children, children_of.last_pid
        else:
            children, last = self._children(pid)
        sample = Sample(fd_count=count, fds=known[1], children=children, last_pid=last)
        self.last = sample
        return sample

    def _children(self, pid: int) -> tuple[dict[int, StatLine], int | None]:
        if not self.tasks.has_children():
            return {}, self.tasks.last_pid() if self.children_file is False else None
        if self.children_file is not False:
            pids = self.tasks.task_children(pid)
            self.children_file = pids is not None
            if pids is not None:
                return self.tasks.child_stats(pid, pids), None
        # No children file (CONFIG_PROC_CHILDREN off). Read the PID counter
        # first: any process created after it has a larger PID (modulo wrap).
        last = self.tasks.last_pid()
        candidates: Iterable[int] | None = None
        previous = self.last
        if previous is not None and previous.last_pid is not None and last is not None:
            if 0 <= last - previous.last_pid <= _MAX_PID_SPAN:
                candidates = {*previous.children, *range(previous.last_pid + 1, last + 1)}
        # A walk of every process otherwise: the first time, after a wrap,
        # or when the machine forked a lot meanwhile.
        return self.tasks.child_stats(pid, candidates), last

    def leaks(self, check: LeakCheck, *, full: bool = False) -> Leaks:
        assert check.before is not None
        after = self.sample(full=full or bool(check.released))
        if self._owned_keys is None:
            self._owned_keys = set().union(*(keys for _, keys in self.owned.values())) | self.kept
        return diff(check.before, after, check.checks, owned=self._owned_keys,
                    released=check.released,
                    adopted_fds=self.adopted.ADOPTED_FDS,
                    adopted_pids=self.adopted.ADOPTED_PIDS)

    # -- hooks ---------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Once, not per test: what each marked test may leak. A bad marker
        # fails the test's setup through a fixture of the plugin's.
        for item in items:
            marker = item.get_closest_marker(MARKER)
            if marker is None:
                continue
            try:
                self.allowed[item.nodeid] = (_parse_checks(marker.args, f"@pytest.mark.{MARKER}")
                                             if marker.args else frozenset(CHECKS))
            except pytest.UsageError as e:
                self.bad_markers[item.nodeid] = str(e)
                names = getattr(item, "fixturenames", None)
                if isinstance(names, list):
                    names.insert(0, "_reaper_doctor_bad_marker")

    @pytest.fixture
    def _reaper_doctor_bad_marker(self, request: pytest.FixtureRequest) -> None:
        pytest.fail(self.bad_markers.get(request.node.nodeid, "bad marker"), pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, None, Any]:
        self._begin(None, None)
        return (yield)

    def _begin(self, item: pytest.Item | None, after: Sample | None) -> None:
        """Open the next test's check: its before is the last test's after
        (nothing runs between two tests), read outside capture like the
        after is; there is no setup hook to pay for."""
        self.current = None
        if os.getpid() != self.pid:
            return
        check = self.current = LeakCheck(checks=self.settings.checks,
                                         started_ticks=_boot_ticks(),
                                         threads=threading.active_count())
        if self.recorder is not None:
            self.recorder.take()   # what pytest did between tests
            self.recorder.test = item.nodeid if item is not None else ""
        try:
            check.before = after if after is not None else self.sample()
        except Exception as e:  # never raised into the suite: reported on its test
            check.error = f"{type(e).__name__}: {e}"

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if self.recorder is not None and self.current is not None:
            self.recorder.test = nodeid   # the events it records are this test's

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> None:
        # A fixture broader than the test keeps its resources past this
        # test's teardown on purpose: note what its setup makes, from here
        # to the next fixture's setup or the end of the test's setup. (Fixtures are set
        # up one after the other, each once its own fixtures are; a plain
        # hook costs less than a wrapper around every fixture of every test.)
        self._close_interval()
        check = self.current
        if check is None or check.before is None or fixturedef.scope == "function":
            return None
        try:
            self._interval = (fixturedef, self._keys(self.sample(keep=False)))
        except Exception:
            pass
        return None

    def _close_interval(self) -> None:
        if self._interval is None:
            return
        fixturedef, before = self._interval
        self._interval = None
        try:
            made = self._keys(self.sample(keep=False)) - before
        except Exception:
            return
        name, keys = self.owned.get(id(fixturedef), (_fixture_label(fixturedef), set()))
        code = getattr(getattr(fixturedef, "func", None), "__code__", None)
        if code is not None:
            self.fixture_codes[code] = name
        self.owned[id(fixturedef)] = (name, keys | made)
        self._owned_keys = None
        self._remember_origins(made)

    @pytest.hookimpl
    def pytest_fixture_post_finalizer(self, fixturedef: Any, request: Any) -> None:
        owned = self.owned.pop(id(fixturedef), None)
        if owned is None:
            return
        self._owned_keys = None
        if self.current is not None:
            self.current.released |= owned[1]  # they must be gone by the end of this test
            self.current.released_by.append(owned)

    def _amend(self, report: pytest.TestReport, check: LeakCheck, text: str, fails: bool,
               notes: list[str]) -> None:
        """The teardown report gets the check's result (an error in fail
        mode); it travels with the report to an xdist controller."""
        info: dict[str, Any] = {"checks": sorted(check.checks), "leaked": fails,
                                "ran": check.ran, "notes": notes}
        report.reaper_doctor = info  # type: ignore[attr-defined]  # travels with the report to an xdist controller
        if not fails or self.settings.mode != "fail":
            return
        if report.passed and not check.failed:
            report.outcome = "failed"   # an error in teardown, with the block as its text
            report.longrepr = text
        else:
            # The test has already failed: no second error for it. Its
            # traceback (kept in sys.last_traceback for post-mortem) may be
            # what holds these open; the summary shows them, as a note.
            info["note"] = text

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> Generator[None, None, None]:
        # tryfirst: the outermost wrapper, so this runs after every fixture
        # finalizer and every other plugin's teardown.
        self._close_interval()   # the setup failed before its end
        try:
            result = yield
        except BaseException:
            self._after(item, nextitem, may_raise=False)
            raise
        self._after(item, nextitem, may_raise=True)
        return result

    def _after(self, item: pytest.Item, nextitem: pytest.Item | None, *,
               may_raise: bool) -> None:
        check = self.current
        self.current = None
        if check is None or os.getpid() != self.pid:
            return  # a forked child running pytest code: not the process we watch
        check.checks = check.checks - self.allowed.get(item.nodeid, frozenset())
        if item.nodeid in self.bad_markers:
            check.checks = frozenset()
        events = self.recorder.take() if self.recorder is not None else []
        if self.recorder is not None:
            self.recorder.test = None
        after: Sample | None = None
        text, fails = "", False
        try:
            if not check.checks:
                after = self.sample()   # what it was allowed to leave is the next one's before
            elif check.before is None:
                text, fails = block(item.nodeid, [Entry(
                    "check-error", f"before the test: {check.error}")]), False
            else:
                text, fails = self._check(check, item, events)
                after = self.last
        except Exception as e:  # never raised into the suite: reported on this test
            text = block(item.nodeid, [Entry("check-error",
                                             f"after the test: {type(e).__name__}: {e}")])
            fails = False
        notes, self.pending_notes = self.pending_notes, []
        if check.checks:
            self.results[item.nodeid] = (check, text, fails, notes)
        self._begin(nextitem, after)
        if not text:
            return
        if self.settings.mode == "warn" or not fails:
            # Inside the teardown call: with -W error it becomes a teardown
            # error, unless the teardown has already raised its own.
            try:
                item.warn(ReaperDoctorWarning(text))
            except Exception:
                if may_raise:
                    raise

    def _check(self, check: LeakCheck, item: pytest.Item, events: list[Event]
               ) -> tuple[str, bool]:
        found = self.leaks(check)
        if not (found or found.exited):
            return "", False
        links: dict[int, str] = {}
        gc_closed: dict[int, tuple[str, FdKey]] = {}
        if found.fds:
            # Links and origins now: a garbage-collected socket takes both along.
            links = self._links(found.fds)
            self._remember_origins({("fd", fd, key) for fd, key in found.fds.items()}, events)
            with warnings.catch_warnings():
                # Its ResourceWarnings name the plugin as their source; the
                # report names the test and the line that made them.
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            still = self.leaks(check)
            gc_closed = {fd: (links[fd], key) for fd, key in found.fds.items()
                         if fd in links and still.fds.get(fd) != key}
            found = still
        found = self._wait_in_flight(check, found)
        for st in found.exited:
            owner = self.ledger.get((st.pid, st.start_ticks))
            self.pending_notes.append(f"pid {st.pid} ({st.comm}) exited during {item.nodeid}"
                         + (f": the leaked child of {owner}" if owner else "")
                         + "; nobody waited for it")
        entries, table_full = self._entries(found, check, item, events, links, gc_closed)
        if not entries:
            return "", False
        owner = self._owners(found, check)
        text = block(item.nodeid, entries, owner=owner)
        return text, any(e.kind != "check-error" for e in entries) or table_full

    def _owners(self, found: Leaks, check: LeakCheck) -> str | None:
        """The fixtures finalized in this test that left something behind."""
        keys: set[Key] = {("fd", fd, key) for fd, key in found.fds.items()}
        keys |= {("child", st.pid, st.start_ticks) for st in (*found.children, *found.zombies)}
        names = [name for name, theirs in check.released_by if keys & theirs]
        return ", ".join(names) or None

    def _wait_in_flight(self, check: LeakCheck, found: Leaks) -> Leaks:
        """Poll, within the grace period, only while something is on its way
        out: a thread the test started still runs, or the count falls."""
        deadline = time.monotonic() + self.settings.grace_s
        interval = 0.005
        count = self.fd_count()
        falling = False
        while found and time.monotonic() < deadline:
            if not (falling or threading.active_count() > check.threads):
                break
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 2, 0.05)
            now = self.fd_count()
            falling = now is not None and count is not None and now < count
            count = now
            found = self.leaks(check)
        return found

    # -- what was found, described -------------------------------------------

    def _links(self, fds: Iterable[int]) -> dict[int, str]:
        links = {}
        for fd in fds:
            link = self.fds.fd_link(self.pid, fd)
            if link is not None:
                links[fd] = link
        return links

    def _remember_origins(self, keys: set[Key], events: list[Event] | None = None) -> None:
        """Match the creation events to new resources while they are open."""
        if self.recorder is None:
            return
        if events is None:
            events = self.recorder.events
        fds = {fd: key for kind, fd, key in keys if kind == "fd"}
        wanted = self._links(k for k in fds if ("fd", k, fds[k]) not in self.origins)
        for fd, origin in match_fds(events, wanted).items():
            self.origins[("fd", fd, fds[fd])] = origin

    def _entries(self, found: Leaks, check: LeakCheck, item: pytest.Item, events: list[Event],
                 links: dict[int, str], gc_closed: dict[int, tuple[str, FdKey]]
                 ) -> tuple[list[Entry], bool]:
        entries: list[Entry] = []
        links = {**links, **self._links(fd for fd in found.fds if fd not in links)}
        fds = {fd: key for fd, key in found.fds.items()
               if fd in links and not _matches(links[fd], self.settings.allow_paths)}
        gc_closed = {fd: (link, key) for fd, (link, key) in gc_closed.items()
                     if not _matches(link, self.settings.allow_paths)}
        origin_of = {fd: self.origins.get(("fd", fd, key)) for fd, key in fds.items()}
        children = [*found.children, *found.zombies]
        infos = {st.pid: self.process.describe_process(st.pid) for st in children}
        for st in [st for st in children if st.start_ticks < check.started_ticks - 1]:
            # Born before this test: an orphan of an earlier test's child that
            # came home now. Not this test's leak.
            children.remove(st)
            self.ledger.setdefault((st.pid, st.start_ticks), "an earlier test")
            self.pending_notes.append(f"pid {st.pid} ({st.comm}) was re-parented to the test "
                                      f"process during {item.nodeid}, but started before it")
        child_origin = self._child_origins(children, infos, check)
        self._await_exec(children, infos, child_origin)
        children = [st for st in children
                    if not _matches(_command_line(infos[st.pid], st), self.settings.allow_commands)]
        # The first use of a helper's cache is not a leak.
        fds = {fd: k for fd, k in fds.items()
               if not self._first_use(("fd", fd, k), origin_of.get(fd), item, links[fd])}
        children = [st for st in children if st.state == "Z" or not self._first_use(
            ("child", st.pid, st.start_ticks), child_origin.get(st.pid), item,
            f"pid {st.pid} {st.comm}")]
        limit = _fd_limit()
        count = self.fd_count() or len(found.fds)
        table_full = bool(fds) and limit is not None and count >= limit - 1
        if table_full:
            examples: list[str] = []
            for fd in sorted(fds)[-3:]:
                examples.append(f"fd {fd:<5} {links[fd]}")
                examples += [f"    {w}" for w in self._where(origin_of.get(fd), item)]
            entries.append(Entry("table-full", f"the test filled the descriptor table: {count} "
                                 f"descriptors open (ulimit -n {limit}), {len(fds)} of them "
                                 f"new; e.g.:", tuple(examples), len(fds)))
        elif fds:
            holders = self._pipe_holders(fds, links, children)
            gone = "  (closed while being described)"
            try:
                details = self.fds.describe_fds(self.pid, fds)
            except OSError as e:
                details, gone = [], f"  (not described: {e.strerror or e})"
            described = {d.fd for d in details}
            for d in details:
                inode = links[d.fd][6:-1] if links[d.fd].startswith("pipe:[") else ""
                entries.append(Entry(fd_kind(d), describe_fd(d, holders.get(inode, [])),
                                     self._where(origin_of.get(d.fd), item)))
            for fd in sorted(set(fds) - described):
                entries.append(Entry("unclosed-fd", f"fd {fd:<5} {links[fd]}{gone}",
                                     self._where(origin_of.get(fd), item)))
        for fd, (link, key) in sorted(gc_closed.items()):
            origin = self.origins.get(("fd", fd, key))
            entries.append(Entry("gc-closed", f"fd {fd:<5} {link}  (closed only by the "
                                 "garbage collector)", self._where(origin, item)))
        for st in children:
            key = (st.pid, st.start_ticks)
            self.ledger.setdefault(key, item.nodeid)
            origin = child_origin.get(st.pid)
            if st.state == "Z":
                entries.append(Entry("zombie", describe_zombie(st, infos[st.pid]),
                                     self._where(origin, item)))
                continue
            kind = {"forked": "forked-child", "orphan": "orphan"}.get(
                origin.relation if origin else "", "running-child")
            entries.append(Entry(kind, describe_child(st, infos[st.pid], kind),
                                 self._where(origin, item)))
        # Origins of what is gone are of no more use.
        for old in [k for k in self.origins if k[0] == "fd" and k[1] not in found.fds
                     and k not in self.kept]:
            if not any(old in keys for _, keys in self.owned.values()):
                del self.origins[old]
        return entries, table_full

    def _child_origins(self, children: list[StatLine], infos: dict[int, Any],
                       check: LeakCheck) -> dict[int, Origin]:
        if self.recorder is None or not children:
            return {}
        found = match_children(self.recorder.spawns,
                               {st.pid: tuple(infos[st.pid].cmdline) if infos[st.pid] and
                                infos[st.pid].cmdline else () for st in children},
                               self._own_argv())
        for st in children:
            origin = found.get(st.pid)
            if origin is not None:
                self.origins[("child", st.pid, st.start_ticks)] = origin
        return found

    def _await_exec(self, children: list[StatLine], infos: dict[int, Any],
                    origins: dict[int, Origin]) -> None:
        """A child just started may not have exec'd yet (its command line is
        still ours, or empty): give it a moment, so that the report names
        the command it runs."""
        deadline = time.monotonic() + 0.5
        for st in children:
            origin = origins.get(st.pid)
            argv = origin.event.argv if origin is not None else None
            if st.state == "Z" or not argv:
                continue
            # Started: it runs our command line until it execs its own. An
            # orphan: it runs its parent's until it execs.
            before = argv if origin is not None and origin.relation == "orphan" else self._own_argv()
            while time.monotonic() < deadline:
                info = infos.get(st.pid)
                if info is None or (info.cmdline and tuple(info.cmdline) != before):
                    break
                time.sleep(0.005)
                infos[st.pid] = self.process.describe_process(st.pid)

    def _pipe_holders(self, fds: dict[int, FdKey], links: dict[int, str],
                      children: list[StatLine]) -> dict[str, list[str]]:
        """{pipe inode: ["child pid N (fd k)"]}: which leaked child holds the
        other end of a leaked pipe."""
        inodes = {links[fd][6:-1] for fd in fds if links[fd].startswith("pipe:[")}
        holders: dict[str, list[str]] = {}
        if not inodes:
            return holders
        for st in children:
            if st.state == "Z":
                continue
            try:
                theirs = self.fds.fd_links(st.pid)
            except Exception:
                continue
            for fd, link in sorted(theirs.items()):
                if link.startswith("pipe:[") and link[6:-1] in inodes:
                    holders.setdefault(link[6:-1], []).append(f"child pid {st.pid} (its fd {fd})")
        return holders

    def _first_use(self, key: Key, origin: Origin | None, item: pytest.Item, what: str) -> bool:
        """Whether a resource is the first one a helper's line made (a
        cache): remembered and kept, not reported."""
        if not self.settings.first_use or origin is None:
            return False
        places = user_places(origin.event.frames, self.library)
        if len(places) < 2 or origin.relation == "orphan":
            return False   # made by the test, a fixture or setUpClass itself: not a cache
        place = places[0]
        if place.code in self._fixture_codes(item) or place.code is _test_code(item):
            return False
        site = (place.filename, place.lineno)
        first = self.first_use.get(site)
        if first is None or first == item.nodeid:
            self.first_use[site] = item.nodeid
            self.kept.add(key)
            self._owned_keys = None
            if key[0] == "child":
                self.ledger.setdefault((key[1], key[2]), f"{item.nodeid} (first use)")
            self.pending_notes.append(
                f"kept from first use in {item.nodeid}: {what}, made at "
                f"{self._relative(place.filename)}:{place.lineno}")
            return True
        return False

    def _where(self, origin: Origin | None, item: pytest.Item) -> tuple[str, ...]:
        if self.recorder is None:
            return ()
        if origin is None:
            return ("no Python-level origin: made in C code, or by a call no audit "
                    "event reports",)
        places = user_places(origin.event.frames, self.library)
        if not places:
            return ("no Python-level origin: made in C code",)
        first = places[0]
        verb = {"started": "started", "forked": "forked",
                "orphan": "orphan of a process started"}.get(origin.relation, "made")
        line = f"{verb} at {self._relative(first.filename)}:{first.lineno} in {first.function}"
        fixture = self._fixture_of(places, item)
        if fixture:
            line += f" ({fixture})"
        if origin.event.test and origin.event.test != item.nodeid:
            line += f", during {origin.event.test}"
        lines = [line]
        source = linecache.getline(first.filename, first.lineno).strip()
        if source:
            lines.append(f"  {source}")
        for place in places[1:3]:
            lines.append(f"called from {self._relative(place.filename)}:{place.lineno} "
                         f"in {place.function}")
        return tuple(lines)

    def _relative(self, filename: str) -> str:
        root = os.path.join(self.rootpath, "") if self.rootpath else None
        return filename[len(root):] if root and filename.startswith(root) else filename

    def _fixture_codes(self, item: pytest.Item) -> dict[Any, str]:
        codes: dict[Any, str] = dict(self.fixture_codes)
        info = getattr(item, "_fixtureinfo", None)
        for name, defs in (getattr(info, "name2fixturedefs", None) or {}).items():
            for fixturedef in defs:
                code = getattr(getattr(fixturedef, "func", None), "__code__", None)
                if code is not None:
                    codes[code] = _fixture_label(fixturedef)
        return codes

    def _fixture_of(self, places: list[Any], item: pytest.Item) -> str | None:
        codes = self._fixture_codes(item)
        for place in places:
            if place.code in codes:
                return codes[place.code]
            if place.function.endswith("setUpClass"):
                return f"setUpClass of {place.function.rsplit('.', 1)[0]}"
        return None

    def _own_argv(self) -> tuple[str, ...]:
        if self.argv is None:
            info = self.process.describe_process(self.pid)
            self.argv = tuple(info.cmdline) if info is not None and info.cmdline else ()
        return self.argv

    def _keys(self, sample: Sample) -> set[Key]:
        return fd_keys(sample) | child_keys(sample)

    # -- the session ---------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # First of all: the teardown report is amended before anyone (the
        # terminal, -x, junitxml, xdist) reads it. Counted from the reports,
        # so that under xdist the controller sums what its workers checked.
        if report.when != "teardown":
            check = self.current
            if check is not None:
                check.failed = check.failed or report.failed
                check.ran = check.ran or report.when == "call"
            return
        result = self.results.pop(report.nodeid, None)
        if result is not None:
            self._amend(report, *result)
        info = getattr(report, "reaper_doctor", None)
        if not isinstance(info, dict):
            return
        if info.get("ran", True):
            self.checked += 1
        if info.get("leaked"):
            self.leaked.append(report.nodeid)
        if info.get("note"):
            self.notes.append(info["note"])
        self.session_notes += info.get("notes") or ()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if os.getpid() != self.pid:
            return
        if self.recorder is not None:
            self.recorder.stop()
        self.session_notes += self._reap_left_overs()

    @pytest.hookimpl
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if os.getpid() == self.pid:
            self.close()

    def close(self) -> None:
        """Give back what the checker holds: its descriptor, its recorder."""
        if self.recorder is not None:
            self.recorder.stop()
        self.fd_count.close()

    def _reap_left_overs(self) -> list[str]:
        """Kill and reap what tests left running; reap their zombies."""
        try:
            children = self._children(self.pid)[0]
        except Exception:
            return []
        done = []
        for st in children.values():
            owner = self.ledger.get((st.pid, st.start_ticks))
            if owner is None:
                continue
            try:
                if st.state != "Z":
                    os.kill(st.pid, signal.SIGKILL)
                os.waitpid(st.pid, 0)
            except (ChildProcessError, ProcessLookupError):
                continue
            done.append(f"at session end, {'reaped zombie' if st.state == 'Z' else 'killed'} "
                        f"pid {st.pid} ({st.comm}), left by {owner}")
        return done

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
        for note in self.session_notes[:40]:
            terminalreporter.write_line(f"  {note}")
        for note in self.notes:
            terminalreporter.write_line("left open by a test that failed (its traceback may "
                                        "hold them):")
            terminalreporter.write_line(textwrap.indent(note, "  "))


def _fixture_label(fixturedef: Any) -> str:
    name = fixturedef.argname
    if name.startswith(_SETUP_CLASS):
        return f"setUpClass of {name[len(_SETUP_CLASS):]}"
    return f"fixture '{name}' ({fixturedef.scope} scope)"


def _test_code(item: pytest.Item) -> Any:
    return getattr(getattr(item, "function", None), "__code__", None)


def _command_line(info: Any, st: StatLine) -> str:
    return " ".join(info.cmdline) if info is not None and info.cmdline else st.comm


def _matches(text: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(text, p) for p in patterns)


def _fd_limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


__all__ = ["CHECKS", "LeakCheck", "LeakChecker", "ReaperDoctorWarning", "Settings"]
