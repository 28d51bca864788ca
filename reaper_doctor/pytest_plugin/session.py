"""The session's side of the check: each test's result put on its teardown
report, the counts and notes, what tests left running killed at the end,
and one summary. Under pytest-xdist each worker sends its counts and notes
to the controller with its `workeroutput` when it finishes; the controller
prints one summary for the whole run. A mixin of LeakChecker."""

from __future__ import annotations

import os
import signal
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from .diff import CHECKS
from .report import s as _s

if TYPE_CHECKING:
    from .checker import LeakCheck, LeakChecker

WORKER_KEY = "reaper_doctor"


def setup_stack(session: pytest.Session) -> dict[Any, Any] | None:
    """pytest's stack of nodes set up, {node: (finalizers, error or None)},
    where a test's teardown can tell whether its setup passed, and so
    whether its call phase ran: at no cost per test, where a
    pytest_runtest_call hook cost some 13 k instructions a test (a third of
    what the plugin then cost a trivial test).
    (Private, as of pytest 7.0: None where it is not that, or under
    --setup-only, whose tests' call phase never runs; CallWatcher then.)"""
    stack = getattr(getattr(session, "_setupstate", None), "stack", None)
    if not isinstance(stack, dict) or getattr(session.config.option, "setuponly", False):
        return None
    return stack


class CallWatcher:
    """Where setup_stack() cannot tell: a test counts as checked when its
    call phase begins."""

    def __init__(self, checker: LeakChecker) -> None:
        self.checker = checker

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        check = self.checker.current
        if check is not None:
            check.ran = True


class Summary:
    """The session half of LeakChecker."""

    # What each test's phases did: whether its call phase ran, read from
    # pytest's setup stack at teardown (setup_stack); whether it failed,
    # from a hook pytest calls only on a failure. (Not from
    # pytest_runtest_logreport: called three times a test, it cost a
    # trivial test more than the whole check.)

    @pytest.hookimpl
    def pytest_exception_interact(self: LeakChecker, node: Any, call: Any, report: Any) -> None:
        # Called only when a phase failed with an exception (neither a skip
        # nor an xfail).
        check = self.current
        if check is not None and getattr(report, "when", None) in ("setup", "call"):
            check.failed = True

    def _failed(self: LeakChecker, item: pytest.Item, check: LeakCheck, text: str) -> None:
        """A test leaked: counted, and in fail mode its teardown report
        gets the error."""
        self.leaked.append(item.nodeid)
        if self.settings.mode != "fail":
            return
        try:
            item.config.pluginmanager.register(TeardownAmender(self, item, check, text))
        except Exception:   # never raised into the suite: the summary still has it
            self.notes.append(text)

    def _amend(self: LeakChecker, report: pytest.TestReport, check: LeakCheck, text: str
               ) -> None:
        """The teardown report gets the check's result, an error; it travels
        with the report to an xdist controller."""
        if report.passed and not check.failed:
            report.outcome = "failed"   # an error in teardown, with the block as its text
            report.longrepr = text
        else:
            # The test has already failed: no second error for it. Its
            # traceback (kept in sys.last_traceback for post-mortem) may be
            # what holds these open; the summary shows them, as a note.
            self.notes.append(text)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self: LeakChecker, session: pytest.Session) -> None:
        if os.getpid() != self.pid:
            return
        if self.recorder is not None:
            self.recorder.stop()
        self.session_notes += self._reap_left_overs()
        # An xdist worker: what it found goes to the controller.
        output = getattr(session.config, "workeroutput", None)
        if isinstance(output, dict):
            output[WORKER_KEY] = {"checked": self.checked, "leaked": self.leaked,
                                  "notes": self.notes, "session_notes": self.session_notes}

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self: LeakChecker, node: Any, error: Any) -> None:
        """An xdist worker finished: add up what it found."""
        found = (getattr(node, "workeroutput", None) or {}).get(WORKER_KEY)
        if not isinstance(found, dict):
            return
        worker = getattr(getattr(node, "gateway", None), "id", None)
        prefix = f"[{worker}] " if worker else ""
        self.checked += int(found.get("checked", 0))
        self.leaked += list(found.get("leaked", ()))
        self.notes += list(found.get("notes", ()))
        self.session_notes += [prefix + note for note in found.get("session_notes", ())]

    @pytest.hookimpl
    def pytest_unconfigure(self: LeakChecker, config: pytest.Config) -> None:
        if os.getpid() == self.pid:
            self.close()

    def close(self: LeakChecker) -> None:
        """Give back what the checker holds: its descriptor, its recorder."""
        if self.recorder is not None:
            self.recorder.stop()
        self.fd_count.close()

    def _reap_left_overs(self: LeakChecker) -> list[str]:
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
    def pytest_terminal_summary(self: LeakChecker, terminalreporter: Any) -> None:
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
        if len(self.session_notes) > 40:
            terminalreporter.write_line(f"  ... and {len(self.session_notes) - 40} more notes")
        for note in self.notes:
            terminalreporter.write_line("left open by a test that failed (its traceback may "
                                        "hold them):")
            terminalreporter.write_line(textwrap.indent(note, "  "))


class TeardownAmender:
    """Registered after a test leaked (fail mode) for its teardown report
    alone, which pytest makes right after the teardown hook: amended first
    of all, before anyone (the terminal, -x, junitxml, xdist) reads it."""

    def __init__(self, checker: LeakChecker, item: pytest.Item, check: LeakCheck,
                 text: str) -> None:
        self.checker = checker
        self.nodeid = item.nodeid
        self.pluginmanager = item.config.pluginmanager
        self.check = check
        self.text = text

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown" or report.nodeid != self.nodeid:
            return
        self.pluginmanager.unregister(self)
        self.checker._amend(report, self.check, self.text)
