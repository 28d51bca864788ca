"""`lesson coalescing --trace` and `scan --trace`.

The wiring and the error tests run for any user (a fake tracer, an empty
REAPER_DOCTOR_TRACEFS). The tracing tests need root and tracefs: the
session fixture `tracefs_root` (conftest.py) mounts tracefs into a temporary
directory if need be, and every test checks that no instance of ours is
left in its `instances/` directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    one_error_line,
    run_cli,
    trace_instance_ready,
    wait_until,
    zombie_children,
)

from reaper_doctor.commands.scan import scan
from reaper_doctor.diagnose.findings import finding
from reaper_doctor.diagnose.trace import measured_sigchld_text, with_measured_sigchld
from reaper_doctor.model.lesson import LessonReport, StrategyResult, Trial
from reaper_doctor.render import lesson as lesson_render
from reaper_doctor.system import tracefs

TARGET = (Path(__file__).parent / "targets" / "sigchld_parent.py").read_text()
N = 64

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: tracefs is root-only")


def _dead_instances(root: Path) -> list[Path]:
    """Our instances whose process is gone: left behind by somebody. (Other
    test sessions on this machine may be tracing right now: theirs are alive.)"""
    left = []
    for path in tracefs.instances_of(root):
        pid = int(path.name[len(tracefs.INSTANCE_PREFIX):].split("-")[0])
        if not os.path.exists(f"/proc/{pid}"):
            left.append(path)
    return left


def _target(spawner, children: int) -> subprocess.Popen:
    return spawner.python(TARGET, "once", str(children), stdin=subprocess.PIPE)


def _tell(proc: subprocess.Popen, command: str) -> str:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


# ------------------------------------------------------------- pure parts


def test_measured_counts_join_rd102_only():
    rd102 = finding("RD102", 7, "5 zombie children of PID 7 persist; loop waitpid", count=5)
    rd101 = finding("RD101", 8, "3 zombie children of PID 8 persist", count=3)
    measured = {7: {"generated": 64, "merged": 53, "delivered": 11, "ignored": 0,
                    "lost_events": 0, "duration_s": 2.0},
                8: {"generated": 3, "merged": 0, "delivered": 0, "ignored": 3,
                    "lost_events": 0, "duration_s": 2.0}}
    once, none = with_measured_sigchld([rd102, rd101], measured)
    assert once.message.endswith("; measured: 53 of 64 SIGCHLD merged, 11 delivered in 2.0 s")
    assert once.evidence["measured"] == measured[7] and once.evidence["count"] == 5
    assert none == rd101  # RD101: no handler, the counts add nothing
    assert with_measured_sigchld([rd102], {}) == [rd102]
    assert "no SIGCHLD sent in 2.0 s" in measured_sigchld_text(
        {"generated": 0, "merged": 0, "delivered": 0, "duration_s": 2.0})
    assert "dropped 4 events" in measured_sigchld_text(
        {"generated": 9, "merged": 1, "delivered": 8, "lost_events": 4})


def _trial(strategy: str, pid: int, runs: int | None, left: int,
           kernel: dict[str, int]) -> Trial:
    return Trial(strategy=strategy, children=64, pid=pid, handler_runs=runs,
                 reaped=runs if strategy != "sig-ign" else None, zombies_left=left,
                 still_alive=0, cleanup_reaped=left, settle_s=0.1,
                 kernel={"ignored": 0, "lost_events": 0, **kernel})


def _traced_report() -> LessonReport:
    return LessonReport(children=64, trials=1, traced=True, strategies=(
        StrategyResult("wait-once", 64, (_trial("wait-once", 101, 9, 55, dict(
            generated=64, merged=53, delivered=11)),)),
        StrategyResult("waitpid-loop", 64, (_trial("waitpid-loop", 201, 3, 0, dict(
            generated=64, merged=61, delivered=3)),)),
        StrategyResult("sig-ign", 64, (_trial("sig-ign", 301, None, 0, dict(
            generated=0, merged=0, delivered=0)),)),
        StrategyResult("pidfd", 64, (_trial("pidfd", 401, 64, 0, dict(
            generated=64, merged=0, delivered=0, ignored=64)),)),
    ))


def test_lesson_renders_kernel_counts_on_hand_built_data():
    doc = json.loads(lesson_render.render_json(_traced_report()))
    assert doc["traced"] is True
    once, loop, ign, pidfd = doc["strategies"]
    assert once["kernel"] == {"generated": 64, "merged": 53, "delivered": 11, "ignored": 0,
                              "lost_events": 0}
    assert once["cpython_merged"] == 2 and loop["cpython_merged"] == 0
    assert ign["cpython_merged"] is None and pidfd["cpython_merged"] is None
    assert once["trials"][0]["kernel"]["merged"] == 53

    text = lesson_render.render_text(_traced_report(), color=False, width=120)
    for word in ("generated", "in kernel", "delivered", "CPython"):
        assert word in text
    row = next(line for line in text.splitlines() if line.startswith("wait-once"))
    assert row.split() == ["wait-once", "64", "9", "9", "55", "64", "53", "11", "2"]
    # At 80 columns the kernel's counts are a second table, each within 80.
    narrow = lesson_render.render_text(_traced_report(), color=False, width=80)
    rows = [line.split() for line in narrow.splitlines() if line.startswith("wait-once ")]
    assert rows == [["wait-once", "64", "9", "9", "55"], ["wait-once", "64", "64", "53", "11", "2"]]
    assert max(map(len, narrow.splitlines())) <= 80
    flat = " ".join(text.split())
    assert ("for wait-once it generated 64 SIGCHLDs, 53 arrived while one was already "
            "pending and merged into it (result 2), and 11 were delivered") in flat
    assert "11 deliveries became 9 runs of the Python handler, 2 lost in its flag" in flat
    assert "53 + 2 = 55 zombies" in flat
    assert "sig-ign the kernel sent no SIGCHLD at all" in flat
    # Without --trace the table and the text stay as they were.
    plain = lesson_render.render_text(LessonReport(64, 1, _traced_report().strategies), color=False)
    assert "in kernel" not in plain and "tracepoints" not in plain


class FakeTracer:
    """Stands in for system.tracers.SigchldTracer: records what scan asks of it."""

    def __init__(self) -> None:
        self.attached: list[int] = []
        self.measured = False

    def attach(self, pid: int) -> bool:
        self.attached.append(pid)
        return True

    def measure(self) -> dict[int, dict[str, float]]:
        self.measured = True
        return {pid: {"generated": 64, "merged": 50, "delivered": 14, "ignored": 0,
                      "lost_events": 0, "duration_s": 0.5} for pid in self.attached}


def test_scan_asks_the_tracer_about_caught_zombie_parents(spawner):
    target = _target(spawner, 16)
    _tell(target, "release")
    wait_until(lambda: zombie_children(target.pid), what="zombies under the target")
    tracer = FakeTracer()
    report = scan([target.pid], grace_s=0.0, tracer=tracer, trace_s=0.5)
    (t,) = report.targets
    assert tracer.attached == [target.pid] and tracer.measured
    assert t.grace_s == 0.5 and t.samples == 2  # the window became at least trace_s
    (rd102,) = [f for f in t.findings if f.code == "RD102"]
    assert rd102.evidence["measured"]["merged"] == 50
    assert "measured: 50 of 64 SIGCHLD merged, 14 delivered in 0.5 s" in rd102.message


def test_scan_tracer_not_asked_without_caught_zombie_parent(spawner):
    parent = spawner.zombie_parent("0", "1")  # SIGCHLD default: RD101, nothing to trace
    tracer = FakeTracer()
    report = scan([parent.pid], grace_s=0.2, tracer=tracer, trace_s=0.2)
    assert tracer.attached == [] and tracer.measured
    assert [f.code for f in report.targets[0].findings] == ["RD101"]


# ------------------------------------------------------ errors (any user)


@pytest.mark.parametrize("argv", [["scan", "{pid}", "--trace", "1"],
                                  ["lesson", "coalescing", "--trace"]])
def test_trace_option_with_empty_tracefs_dir(tmp_path, argv):
    env = {**os.environ, tracefs.TRACEFS_ENV: str(tmp_path)}
    args = [a.format(pid=os.getpid()) for a in argv]
    line = one_error_line(run_cli(*args, env=env, timeout_s=60))
    assert "not a tracefs mount" in line and "mount -t tracefs nodev" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "-1", "abc", "99999"])
def test_scan_trace_bad_seconds(value):
    one_error_line(run_cli("scan", str(os.getpid()), "--trace", value, timeout_s=30))


# --------------------------------------------------- tracing (root only)


@needs_root
def test_lesson_coalescing_trace_json(trace_env, tracefs_root):
    proc = subprocess.Popen([sys.executable, "-m", "reaper_doctor", "lesson", "coalescing",
                             "--children", str(N), "--trace", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=trace_env)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    doc = json.loads(out)
    assert doc["traced"] is True
    by_name = {s["name"]: s for s in doc["strategies"]}

    once = by_name["wait-once"]
    print("wait-once kernel", once["kernel"], "handler runs", once["handler_runs"],
          "zombies", once["zombies_left"])
    k = once["kernel"]
    assert k["generated"] >= N and k["merged"] > 0 and k["delivered"] < k["generated"]
    for t in once["trials"]:
        tk = t["kernel"]
        assert tk["generated"] >= N and tk["merged"] > 0 and tk["delivered"] < tk["generated"]
        # CPython runs the Python handler at most once per kernel delivery.
        assert 1 <= t["handler_runs"] <= tk["delivered"]
        assert t["cpython_merged"] == tk["delivered"] - t["handler_runs"]

    loop = by_name["waitpid-loop"]
    assert loop["zombies_left"] == 0 and loop["kernel"]["generated"] >= N
    assert all(t["zombies_left"] == 0 for t in loop["trials"])
    # SIG_IGN: the kernel reaps at exit and sends no SIGCHLD at all
    # (do_notify_parent() in kernel/signal.c drops the signal).
    assert by_name["sig-ign"]["kernel"]["generated"] == 0
    pidfd = by_name["pidfd"]
    if pidfd["skipped"] is None:  # SIGCHLD default: generated, then discarded
        assert pidfd["kernel"]["ignored"] == pidfd["kernel"]["generated"] >= N
        assert pidfd["kernel"]["delivered"] == 0

    assert doc["leftover_processes"] == 0
    assert tracefs.instances_of(tracefs_root, proc.pid) == []
    assert _dead_instances(tracefs_root) == []


@needs_root
def test_lesson_trace_text(trace_env, tracefs_root):
    result = run_cli("lesson", "coalescing", "--children", "16", "--trials", "1",
                     "--strategy", "wait-once", "--trace", "--no-color", env=trace_env,
                     timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert "in kernel" in result.stdout and "CPython" in result.stdout
    assert "The kernel's tracepoints show where they went" in " ".join(result.stdout.split())
    assert _dead_instances(tracefs_root) == []


@needs_root
def test_scan_trace_measures_a_burst_into_rd102(spawner, trace_env, tracefs_root):
    # 192 children: 128 exit first and leave zombies that persist through the
    # scan (zombies must be there at the first sample for RD102); the other
    # 64 exit while the scan traces. The first 128 exit with SIGCHLD blocked,
    # so that 127 zombies are left whatever the load: of a bare release, on
    # a busy machine, the children may exit one by one, each reaped by its
    # own handler run, and the 64 later runs may then reap what was left.
    target = _target(spawner, 192)
    assert _tell(target, "burst 128") == "burst 128"
    assert len(zombie_children(target.pid)) >= 127   # (the one handler run may be to come)
    scanner = subprocess.Popen([sys.executable, "-m", "reaper_doctor", "scan",
                                str(target.pid), "--trace", "2", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=trace_env, start_new_session=True)
    instance = tracefs_root / "instances" / f"{tracefs.INSTANCE_PREFIX}{scanner.pid}"
    try:
        wait_until(lambda: trace_instance_ready(instance) or scanner.poll() is not None,
                   timeout_s=60, what="the scan's trace to start")
        assert scanner.poll() is None, scanner.communicate()
        assert _tell(target, "release") == "released"
        out, err = scanner.communicate(timeout=60)
    finally:
        if scanner.poll() is None:
            scanner.kill()
            scanner.communicate()
    assert "Traceback" not in err
    assert f"tracing SIGCHLD of PID {target.pid} for 2 s" in err
    assert scanner.returncode == 1, err
    (t,) = json.loads(out)["targets"]
    assert t["grace_s"] == 2.0 and t["sigchld"] == "caught"
    (rd102,) = [f for f in t["findings"] if f["code"] == "RD102"]
    m = rd102["evidence"]["measured"]
    print(rd102["message"])
    assert m["generated"] >= N and m["merged"] > 0 and m["delivered"] < m["generated"]
    assert m["duration_s"] >= 2.0
    assert f"measured: {m['merged']} of {m['generated']} SIGCHLD merged" in rd102["message"]
    assert not instance.exists()
    assert _dead_instances(tracefs_root) == []
