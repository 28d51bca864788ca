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


class Summary:
    """The session half of LeakChecker."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self: LeakChecker, report: pytest.TestReport) -> None:
        # First of all: the teardown report is amended before anyone (the
        # terminal, -x, junitxml, xdist) reads it.
        if report.when != "teardown":
            check = self.current
            if check is not None:
                check.failed = check.failed or report.failed
                check.ran = check.ran or report.when == "call"
            return
        # The test just checked: its teardown report comes right after its
        # teardown hook.
        result, self.result = self.result, None
        if result is None:
            return
        check, text, fails = result
        if check.ran:
            self.checked += 1
        if fails:
            self.leaked.append(report.nodeid)
        if text:
            self._amend(report, check, text, fails)

    def _amend(self: LeakChecker, report: pytest.TestReport, check: LeakCheck, text: str,
               fails: bool) -> None:
        """The teardown report gets the check's result (an error in fail
        mode); it travels with the report to an xdist controller."""
        if not fails or self.settings.mode != "fail":
            return
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
