"""The clean-up contract (system/lifecycle.py) on real processes: a
session's every member is killed and reaped, signals wait for a clean-up,
SIGTERM unwinds the stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import wait_until

from reaper_doctor.collect.tasks import session_members
from reaper_doctor.system.lifecycle import (
    deferred_signals,
    end_session,
    signals_unwind,
    start_session,
)

# A parent that ignores SIGTERM, with a child that ignores it too and a
# grandchild orphaned (its parent exits): all in the parent's session.
STUBBORN = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        os._exit(0)                      # the grandchild is orphaned
    if os.fork() == 0:
        time.sleep(60)                   # ignores SIGTERM (inherited)
        os._exit(0)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_end_session_kills_and_reaps_every_member_even_stubborn_ones():
    proc = start_session([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        wait_until(lambda: sum(1 for st in session_members(proc.pid) if st.state != "Z") >= 3)
        before = {(st.pid, st.start_ticks) for st in session_members(proc.pid)}
        result = end_session(proc, grace_s=0.2, seen=before)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert result.leftover_processes == 0, result
    # The parent's zombie, its live child and the orphan came to us and were reaped.
    assert result.killed >= 1 and result.reaped == 3, result
    assert session_members(proc.pid) == []
    assert proc.returncode == -signal.SIGKILL  # SIGTERM was ignored


def test_end_session_after_the_child_exited_still_clears_its_session():
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n"  # leaves its child
    proc = start_session([sys.executable, "-c", code])
    proc.wait(timeout=30)
    wait_until(lambda: any(st.state != "Z" for st in session_members(proc.pid)))
    result = end_session(proc)
    assert result.leftover_processes == 0 and result.killed == 1
    wait_until(lambda: session_members(proc.pid) == [])


def test_deferred_signals_hold_sigterm_until_the_body_is_done():
    got: list[str] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append("handler"))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            got.append("body done")
        got.append("after")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert got == ["body done", "handler", "after"]


def test_signals_unwind_turns_sigterm_into_systemexit_143():
    ran_finally = False
    with pytest.raises(SystemExit) as exc:
        with signals_unwind():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0)  # let the handler run
            finally:
                ran_finally = True
    assert exc.value.code == 128 + signal.SIGTERM and ran_finally
    assert signal.getsignal(signal.SIGTERM) is not None
