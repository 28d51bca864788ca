"""The per-test check: registered only when the plugin is on.

After each test's teardown a fast path asks two questions: is the
descriptor count what it was (one fstat() of /proc/self/fd held open), and
has the process any child at all (one waitid())? It also looks at the
descriptors made during the test (the recorder's events, usually none):
one still open where another was before means the set changed at the same
count. Only when one of these says something changed is the full
comparison made (diff.py), and only when it finds something are the
reports built (findings.py). A test that closes a descriptor it did not
open and leaks a new one in its place, both outside Python's view (in C),
goes unseen.

The modules that describe a leak (collect.fds, collect.process, psutil's
neighbours) are imported on the first change seen, not at start-up; with
the descriptor table full, the checker gives up its own descriptor for
the import.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any, Generator, Iterable

import pytest

from ..collect import adopted, own
from . import ReaperDoctorWarning
from .diff import CHECKS, ChildKey, FdKey, Key, Leaks, Sample, child_keys, diff, fd_keys
from .findings import Findings
from .fixtures import Setup, broader_fixturedefs, fixture_label, own_setups
from .options import Settings, parse_checks
from .origins import Event, Origin, Recorder
from .report import MARKER, Entry, block
from .session import CallWatcher, Summary, setup_stack

if TYPE_CHECKING:
    from types import ModuleType

    from ..parse.procfs import StatLine
    from .origins import Library

_clock, _BOOTTIME, _active_count = time.clock_gettime, time.CLOCK_BOOTTIME, threading.active_count
_fstat = os.fstat
_poll, _POLLNVAL = select.poll, select.POLLNVAL
has_children = own.has_children

# Raised in every child forked from here: a forked child running pytest code
# is not the process watched (cheaper than a getpid() per test).
_FORKS = [0]


def _count_fork() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_count_fork)

# More PIDs than this allocated on the machine between two samples (other
# workloads fork too) and a full /proc walk is cheaper than probing each.
_MAX_PID_SPAN = 2048
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class LeakCheck:
    """One test's check (one is made per test: what is rarely set is a
    class default, not stored anew each time)."""

    error: str | None = None       # the before sample failed
    # Of the broader fixtures finalized in this test.
    released: frozenset[Key] = frozenset()
    released_by: tuple[tuple[str, set[Key]], ...] = ()
    ran = False                    # its call phase ran
    failed = False                 # setup or call already failed

    def __init__(self, checks: frozenset[str], before: Sample | None = None,
                 started_ticks: float = 0.0, threads: int = 0) -> None:
        self.checks = checks
        self.before = before
        self.started_ticks = started_ticks     # boot time, clock ticks
        self.threads = threads                 # alive when it started


class Describers:
    """What only describing a leak needs, imported on first use."""

    def __init__(self) -> None:
        from ..collect import fds, process, tasks
        from .origins import Library

        self.fds: ModuleType = fds
        self.process: ModuleType = process
        self.tasks: ModuleType = tasks
        self.library: Library = Library()


class LeakChecker(Findings, Summary):
    """Holds the per-test checks and the session's findings."""

    def __init__(self, settings: Settings, rootpath: str = "") -> None:
        from ..system.subreaper import become_subreaper

        self.settings = settings
        self.rootpath = rootpath
        self.pid = os.getpid()
        self.forks = _FORKS[0]
        self.subreaper = settings.subreaper and become_subreaper()
        self.fd_count = own.OwnFdCount()
        self._describers: Describers | None = None
        self.children_file: bool | None = None   # /proc/<pid>/task/*/children works
        self.full: tuple[int | None, dict[int, FdKey]] | None = None  # last full fd read
        self.last_read: tuple[int | None, dict[int, FdKey]] | None = None  # kept or not
        # Made since last_read: the descriptors of events the tests' ends
        # took (None: an event named none), and the recorder's count then.
        self.made_since_read: set[int] | None = set()
        self.read_seq = 0
        self.last: Sample | None = None
        self.steady: Sample | None = None   # a before the fast path may use (_steady)
        self.steady_fd = -1                 # the count's descriptor, for the fast path
        self.setup_stack: dict[Any, Any] | None = None   # pytest's, read at teardown (setup_stack)
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
        self._setups: list[Setup] = []   # broader fixtures' setups under way
        self.allowed: dict[str, frozenset[str]] = {}   # node id -> what its marker allows
        self.bad_markers: dict[str, str] = {}           # node id -> what is wrong with it
        self.recorder: Recorder | None = None
        if settings.origins:
            self.recorder = Recorder(own.last_pid, audit=settings.origins == "audit")
            self.recorder.start()

    # -- what describing needs, loaded late ------------------------------------

    @property
    def describers(self) -> Describers:
        if self._describers is None:
            try:
                self._describers = Describers()
            except (OSError, ImportError):
                # The descriptor table is full: an import needs one. Ours
                # is given back for the time of the import.
                self.fd_count.close()
                try:
                    self._describers = Describers()
                finally:
                    self.fd_count.reopen()
        return self._describers

    @property
    def fds(self) -> ModuleType:
        return self.describers.fds

    @property
    def process(self) -> ModuleType:
        return self.describers.process

    @property
    def tasks(self) -> ModuleType:
        return self.describers.tasks

    @property
    def library(self) -> Library:
        return self.describers.library

    # -- sampling ------------------------------------------------------------

    def sample(self, *, full: bool = False, keep: bool = True,
               children_of: Sample | None = None) -> Sample:
        """The descriptors (read again only when their count has changed,
        or `full`) and the children (those of `children_of` if given).
        Samples taken inside other plugins' wrappers (`keep` False) are not
        kept for the next: there, capture has swapped the standard
        descriptors for its own files."""
        count = self.fd_count()
        known = self.full
        if full or not keep or count is None or known is None or known[0] != count:
            known = (count, self._fd_keys(count, full))
            if keep:
                self.full = known
        if children_of is not None:
            children, last = children_of.children, children_of.last_pid
        else:
            children, last = self._children(self.pid)
        sample = Sample(fd_count=count, fds=known[1], children=children, last_pid=last)
        self.last = sample
        return sample

    def _fd_keys(self, count: int | None, full: bool) -> dict[int, FdKey]:
        """The descriptors' keys: the last read, inside capture or not, with
        the standard descriptors (which capture swaps) and those made since
        it (the recorder's events) looked at anew, if that accounts for the
        count; else a whole read (a listdir and an fstat per descriptor).
        So a broader fixture's setup, read before and after, costs one
        fstat per descriptor it made, and a test that leaks from Python one
        per descriptor it leaked."""
        keys: dict[int, FdKey] | None = None
        last = self.last_read
        if (not full and count is not None and last is not None
                and (made := self._made_fds()) is not None):
            keys = dict(last[1])
            fstat = os.fstat
            for fd in made:
                try:
                    st = fstat(fd)
                except OSError:
                    keys.pop(fd, None)
                    continue
                keys[fd] = (st.st_dev, st.st_ino)
            if len(keys) + (self.fd_count.fd is not None) != count:
                keys = None   # opened or closed out of the recorder's sight
        if keys is None:
            keys = own.own_fd_keys(count)
            if self.fd_count.fd is not None:
                keys.pop(self.fd_count.fd, None)   # ours: the count, not the test's
        self.last_read = (count, keys)
        self.made_since_read = set()
        self.read_seq = self.recorder.seq if self.recorder is not None else 0
        return keys

    def _made_fds(self) -> set[int] | None:
        """The descriptors to look at again over the last read: 0, 1, 2 and
        those made since it, whether a test's end has taken their events or
        the recorder still holds them (None: it cannot tell)."""
        if self.recorder is None or self.made_since_read is None:
            return None
        fds = {0, 1, 2, *self.made_since_read}
        if _add_made_fds(fds, self.recorder.events, self.read_seq):
            return fds
        return None

    def _took(self, events: list[Event]) -> None:
        """A test's events, taken from the recorder: what they made since
        the last read is looked at again by the next reuse of it."""
        made = self.made_since_read
        if made is not None and not _add_made_fds(made, events, self.read_seq):
            self.made_since_read = None

    def _children(self, pid: int) -> tuple[dict[int, StatLine], int | None]:
        if not own.has_children():
            return {}, own.last_pid() if self.children_file is False else None
        if self.children_file is not False:
            pids = self.tasks.task_children(pid)
            self.children_file = pids is not None
            if pids is not None:
                return self.tasks.child_stats(pid, pids), None
        # No children file (CONFIG_PROC_CHILDREN off). Read the PID counter
        # first: any process created after it has a larger PID (modulo wrap).
        last = own.last_pid()
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
                    adopted_fds=adopted.ADOPTED_FDS,
                    adopted_pids=adopted.ADOPTED_PIDS)

    def unchanged(self, check: LeakCheck, events: list[Event]) -> bool | None:
        """The fast path: True if nothing can have changed since the test's
        before sample (same count, no child then or now, no descriptor made
        during the test still open); None if a descriptor made during the
        test is open where another was before (the set must be read again
        although the count is the same); False otherwise."""
        before = check.before
        full = self.full
        if (before is None or before.children or check.released
                or full is None or before.fds is not full[1]):
            return False
        count = before.fd_count
        if count is None or self.fd_count() != count:
            return False
        if events and _made_and_open(events, before):
            return None
        return not own.has_children()

    def _keys(self, sample: Sample) -> set[Key]:
        return fd_keys(sample) | child_keys(sample)

    # -- hooks ---------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session,
                                      items: list[pytest.Item]) -> None:
        # Once, not per test: the broader fixtures own what they make; what
        # each marked test may leak. A bad marker fails the test's setup
        # through a fixture of the plugin's.
        for fixturedef in broader_fixturedefs(items, session):
            own_setups(self, fixturedef)
        for item in items:
            # A keyword lookup first: get_closest_marker() walks the item's
            # chain and its marks, which cost more than checking the test.
            keywords = getattr(item, "keywords", None)
            if keywords is not None and MARKER not in keywords:
                continue
            marker = item.get_closest_marker(MARKER)
            if marker is None:
                continue
            try:
                self.allowed[item.nodeid] = (parse_checks(marker.args, f"@pytest.mark.{MARKER}")
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
        self.setup_stack = setup_stack(session)
        if self.setup_stack is None:
            session.config.pluginmanager.register(CallWatcher(self))
        self._begin(None, None)
        return (yield)

    def _begin(self, item: pytest.Item | None, after: Sample | None) -> None:
        """Open the next test's check: its before is the last test's after
        (nothing runs between two tests), read outside capture like the
        after is; there is no setup hook to pay for. (Called in the process
        watched only: _after has asked, and the run loop is its own.)"""
        check = self.current = LeakCheck(
            self.settings.checks, after,
            _clock(_BOOTTIME) * _TICKS_PER_S, _active_count())
        if after is None:
            try:
                check.before = self.sample()
            except Exception as e:  # never raised into the suite: reported on its test
                check.error = f"{type(e).__name__}: {e}"
        self.steady = self._steady(check.before)
        if self.recorder is not None:
            # What it records from now on is this test's (the next item is
            # known but for the last test of a run, or of an xdist batch).
            self.recorder.test = item if item is not None else ""

    def _steady(self, before: Sample | None) -> Sample | None:
        """`before` if the fast path may compare the next test's end with it
        (a count to compare, no child, the last full read's set, checks on
        and no marker that changes a test's), else None. What this asks of
        the checker changes only in a slow path, which ends in _begin. (With
        markers, whether a test counts as checked depends on its checks,
        which need its node id, built anew on each access: the slow path.)"""
        full = self.full
        if (before is None or before.fd_count is None or before.children
                or full is None or before.fds is not full[1] or self.fd_count.fd is None
                or not self.settings.checks or self.allowed or self.bad_markers):
            return None
        self.steady_fd = self.fd_count.fd
        return before

    # -- fixtures broader than the test (fixtures.py) ---------------------------

    def open_setup(self) -> Setup:
        try:
            before: set[Key] | None = self._keys(self.sample(keep=False))
        except Exception:
            before = None
        setup = Setup(before)
        self._setups.append(setup)
        return setup

    def close_setup(self, fixturedef: Any, setup: Setup) -> None:
        self._setups.remove(setup)
        if setup.before is None:
            return
        try:
            made = self._keys(self.sample(keep=False)) - setup.before
        except Exception:
            return
        if self._setups:
            self._setups[-1].nested |= made   # the enclosing setup's are not these
        made -= setup.nested
        name, keys = self.owned.get(id(fixturedef), (fixture_label(fixturedef), set()))
        code = getattr(getattr(fixturedef, "func", None), "__code__", None)
        if code is not None:
            self.fixture_codes[code] = name
        self.owned[id(fixturedef)] = (name, keys | made)
        self._owned_keys = None
        self._remember_origins(made)

    def released(self, fixturedef: Any) -> None:
        """A broader fixture was finalized: what it owned must be gone by the
        end of this test."""
        owned = self.owned.pop(id(fixturedef), None)
        if owned is None:
            return
        self._owned_keys = None
        if self.current is not None:
            self.current.released |= owned[1]
            self.current.released_by += (owned,)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> Generator[None, None, None]:
        # tryfirst: the outermost wrapper, so this runs after every fixture
        # finalizer and every other plugin's teardown.
        check, stack = self.current, self.setup_stack
        if check is not None and stack is not None:
            # Before pytest tears the test down: its setup passed (so its
            # call phase ran) if it is on the stack with no error.
            entry = stack.get(item)
            check.ran = entry is not None and entry[1] is None
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
        if check is None or _FORKS[0] != self.forks:
            return  # a forked child running pytest code: not the process we watch
        # The fast path, what almost every test takes, in one function: its
        # code runs cold after the test's, where each call and lookup costs
        # several times what it costs in a loop. Nothing can have changed:
        # the count is the same, the process had no child before and has
        # none now, and no descriptor made during the test is open where
        # another was. (unchanged() says the same, for the rest.)
        before = check.before
        recorder = self.recorder
        events = recorder.take() if recorder is not None and recorder.events else []
        if events:
            self._took(events)
        if before is self.steady and before is not None and not check.released:
            try:
                same = (_fstat(self.steady_fd).st_size == before.fd_count
                        and not (events and _made_and_open(events, before))
                        and not has_children())
            except OSError:   # our descriptor closed by the test: the slow path says
                same = False
            if same:
                if check.ran:
                    self.checked += 1
                # The next test's check is this one, made new: nothing else
                # holds it (no leak), and the rest of it is as it was made
                # (no release; no error with a before sample).
                check.ran = check.failed = False
                check.started_ticks = _clock(_BOOTTIME) * _TICKS_PER_S
                check.threads = _active_count()
                self.current = check
                if recorder is not None:
                    recorder.test = nextitem if nextitem is not None else ""
                return
        if recorder is not None:
            recorder.test = None   # the check's own reads are nobody's
        self._after_slow(item, nextitem, check, events, may_raise)

    def _after_slow(self, item: pytest.Item, nextitem: pytest.Item | None,
                    check: LeakCheck, events: list[Event], may_raise: bool) -> None:
        if self.allowed or self.bad_markers:
            # (A node id is built anew on each access: only when needed.)
            nodeid = item.nodeid
            check.checks = check.checks - self.allowed.get(nodeid, frozenset())
            if nodeid in self.bad_markers:
                check.checks = frozenset()
        after: Sample | None = None
        text, fails = "", False
        try:
            same = self.unchanged(check, events) if check.checks else False
            if same:
                after = check.before   # the fast path: nothing read but a count
            elif not check.checks:
                after = self.sample()   # what it was allowed to leave is the next one's before
            elif check.before is None:
                text = block(item.nodeid, [Entry("check-error",
                                                 f"before the test: {check.error}")])
            else:
                text, fails = self._check(check, item, events, full=same is None)
                after = self.last
        except Exception as e:  # never raised into the suite: reported on this test
            text = block(item.nodeid, [Entry("check-error",
                                             f"after the test: {type(e).__name__}: {e}")])
            fails = False
        if self.pending_notes:
            self.session_notes += self.pending_notes
            self.pending_notes = []
        if check.checks:
            if check.ran:
                self.checked += 1
            if fails:
                self._failed(item, check, text)
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

    def _check(self, check: LeakCheck, item: pytest.Item, events: list[Event], *,
               full: bool = False) -> tuple[str, bool]:
        found = self.leaks(check, full=full)
        if not (found or found.exited):
            return "", False
        links: dict[int, str] = {}
        gc_closed: dict[int, tuple[str, FdKey]] = {}
        if found.fds:
            links, gc_closed, found = self._collect_garbage(check, found, events)
        found = self._wait_in_flight(check, found)
        for st in found.exited:
            owner = self.ledger.get((st.pid, st.start_ticks))
            self.pending_notes.append(f"pid {st.pid} ({st.comm}) exited during {item.nodeid}"
                                      + (f": the leaked child of {owner}" if owner else "")
                                      + "; nobody waited for it")
        entries, table_full = self._entries(found, check, item, links, gc_closed)
        if not entries:
            return "", False
        owner = self._owners(found, check)
        text = block(item.nodeid, entries, owner=owner)
        return text, any(e.kind != "check-error" for e in entries) or table_full

    def _collect_garbage(self, check: LeakCheck, found: Leaks, events: list[Event]
                         ) -> tuple[dict[int, str], dict[int, tuple[str, FdKey]], Leaks]:
        """One gc.collect(): the descriptors it closed are gc-closed, not
        leaked. Their links and origins are read first, since a collected
        socket takes both along."""
        import gc
        import warnings

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
        return links, gc_closed, still

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


def _add_made_fds(fds: set[int], events: Iterable[Event], after_seq: int) -> bool:
    """Add the descriptors of the events recorded after `after_seq` to
    `fds`; False if one of them names none (the audit hook's open and
    socket events), so that what was made cannot be told."""
    for event in events:
        if event.seq <= after_seq:
            continue
        if event.fds:
            fds.update(event.fds)
        elif event.sock is not None or event.path is not None:
            return False
    return True


def _made_and_open(events: list[Event], before: Sample) -> bool:
    """Whether a descriptor made during the test is open now where the
    before sample had none or another (an event that names no descriptor
    counts as one). Most are closed again: one poll() tells which (an
    fstat() of each raises: for three, that costs twice as much), and only
    the open ones are fstat()ed."""
    made: list[int] = []
    for event in events:
        if event.fds:
            made += event.fds
        elif event.sock is not None or event.path is not None:
            return True   # the audit hook's: no descriptor to look at
    if not made:
        return False
    poller = _poll()
    for fd in made:
        poller.register(fd, 0)
    closed = {fd for fd, revents in poller.poll(0) if revents & _POLLNVAL}
    known = before.fds
    for fd in made:
        if fd in closed:
            continue
        try:
            st = _fstat(fd)
        except OSError:
            continue   # closed since
        if known.get(fd) != (st.st_dev, st.st_ino):
            return True
    return False
