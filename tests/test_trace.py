"""`reaper-doctor trace` and its tracefs instances (system/tracefs.py).

The parser and error tests run anywhere. The tracing tests need root and
tracefs: the `tracefs_root` fixture (conftest.py) mounts tracefs into a
temporary directory when it is not mounted (`mount -t tracefs nodev DIR`),
`trace_env` points REAPER_DOCTOR_TRACEFS at it, and it is unmounted at the
end of the session. Every test checks that its private
instance directory is gone at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from docs_reference import assert_documented
from helpers import on_pty, one_error_line, run_cli, wait_until, zombie_children

from reaper_doctor.diagnose.trace import trace_findings, trace_verdict
from reaper_doctor.model.signals import parse_signal
from reaper_doctor.model.trace import SignalCounts, TraceResult
from reaper_doctor.parse.tracefs import (
    EventFormat,
    LostEvents,
    TraceRecord,
    count_lines,
    mountinfo_tracefs_mounts,
    parse_event_format,
    parse_trace_line,
)
from reaper_doctor.system import tracefs
from reaper_doctor.system.tracefs import (
    SignalEventsMissing,
    SignalTrace,
    TracefsNotFound,
    TracefsPermissionError,
    find_tracefs,
)

DATA = Path(__file__).parent / "data"
TARGET = (Path(__file__).parent / "targets" / "sigchld_parent.py").read_text()
CHILDREN = 64

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: tracefs is root-only")


def _formats() -> dict[str, EventFormat]:
    return {name: parse_event_format((DATA / f"{name}.format").read_text())
            for name in ("signal_generate", "signal_deliver")}


# ------------------------------------------------------------ pure parsing


def test_event_format_gives_field_names():
    gen = _formats()["signal_generate"]
    assert gen.name == "signal_generate" and gen.id == 261
    for name in ("common_pid", "sig", "pid", "comm", "result"):
        assert gen.has_field(name)
    # The line prints "res=" but the field (and the filter name) is "result".
    assert gen.args == ("sig", "errno", "code", "comm", "pid", "group", "result")


def test_parser_on_captured_lines():
    # Captured on Linux 6.18: a wait-once Python parent, 64 children exiting
    # at once; its handler ran 21 times and 43 zombies stayed.
    lines = (DATA / "trace_pipe_wait_once_64.txt").read_text().splitlines()
    counts = count_lines(lines, _formats(), signal.SIGCHLD)
    assert counts == SignalCounts(generated=64, queued=21, merged=43, delivered=21)

    rec = parse_trace_line(lines[1], _formats())
    assert isinstance(rec, TraceRecord)
    assert (rec.task, rec.task_pid, rec.cpu, rec.event) == ("<...>", 3761, 1, "signal_generate")
    assert rec.fields["result"] == "2" and rec.fields["pid"] == "3674"


def test_parser_tolerates_odd_lines():
    fm = _formats()
    # A task and a comm with spaces, dashes and "pid=" in them; the tgid
    # column of options/record-tgid; no irq-info flags column.
    rec = parse_trace_line(
        "  my srv-x-12  (   12) [001] 215.900001: signal_generate: sig=17 errno=0 code=1 "
        "comm=a pid=3 b pid=3674 grp=1 res=2", fm)
    assert isinstance(rec, TraceRecord)
    assert rec.task == "my srv-x" and rec.task_pid == 12
    assert rec.fields["comm"] == "a pid=3 b" and rec.fields["pid"] == "3674"
    assert rec.fields["result"] == "2"
    assert parse_trace_line("CPU:1 [LOST 23 EVENTS]") == LostEvents(cpu=1, count=23)
    assert parse_trace_line("") is None
    assert parse_trace_line("garbage without structure") is None
    # Without a format, key=value pairs still come out.
    rec = parse_trace_line("  p-5 [000] d..1. 1.5: signal_deliver: sig=17 errno=0 code=1 "
                           "sa_handler=7f sa_flags=c000000")
    assert isinstance(rec, TraceRecord) and rec.fields["sig"] == "17"
    lines = ["CPU:0 [LOST 5 EVENTS]",
             "  p-5 [000] d..1. 1.5: signal_generate: sig=17 errno=0 code=1 comm=p pid=9 "
             "grp=1 res=1",
             "  p-5 [000] d..1. 1.6: signal_generate: sig=10 errno=0 code=1 comm=p pid=9 "
             "grp=1 res=0",
             "  p-5 [000] d..1. 1.7: signal_generate: sig=17 errno=0 code=1 comm=p pid=9 "
             "grp=1 res=7"]
    assert count_lines(lines, fm, 17) == SignalCounts(generated=2, ignored=1, other_result=1,
                                                      lost_events=5)


def test_old_kernel_format_with_res_field():
    text = ('name: signal_generate\nID: 7\nformat:\n\tfield:int common_pid;\toffset:4;\n'
            '\tfield:int sig;\toffset:8;\n\tfield:char comm[16];\toffset:20;\n'
            '\tfield:pid_t pid;\toffset:36;\n\tfield:int res;\toffset:44;\n\n'
            'print fmt: "sig=%d comm=%s pid=%d res=%d", REC->sig, REC->comm, REC->pid, '
            'REC->res\n')
    fmt = parse_event_format(text)
    assert fmt.has_field("res") and not fmt.has_field("result")
    rec = parse_trace_line("  a-1 [000] d... 2.0: signal_generate: sig=17 comm=x y pid=4 res=2",
                           {"signal_generate": fmt})
    assert isinstance(rec, TraceRecord) and rec.fields == {
        "sig": "17", "comm": "x y", "pid": "4", "res": "2"}
    assert count_lines(["  a-1 [000] d... 2.0: signal_generate: sig=17 comm=x pid=4 res=2"],
                       {"signal_generate": fmt}, 17, result_field="res").merged == 1


def test_mountinfo_and_signal_names():
    text = ("36 25 0:12 / /sys/kernel/tracing rw,nosuid - tracefs tracefs rw\n"
            "40 25 0:7 / /sys/kernel/debug rw - debugfs debugfs rw\n"
            "99 25 0:12 / /tmp/a\\040b rw shared:9 - tracefs nodev rw\n")
    assert mountinfo_tracefs_mounts(text) == ["/sys/kernel/tracing", "/tmp/a b"]
    for text in ("CHLD", "SIGCHLD", "sigchld", "17", " chld "):
        assert parse_signal(text) == signal.SIGCHLD
    for bad in ("FOO", "0", "999", ""):
        with pytest.raises(ValueError):
            parse_signal(bad)


def test_verdicts_are_pure():
    base = dict(pid=7, signum=signal.SIGCHLD, duration_s=3.0, interval_s=1.0,
                children_exited=64, zombies_before=0, ended="duration", grace_s=1.0,
                instance="x")
    once = TraceResult(counts=SignalCounts(generated=64, queued=11, merged=53, delivered=11),
                       zombies_left=53, zombies_persisting=53, disposition="caught", **base)
    assert trace_verdict(once) == ("53 of 64 SIGCHLD merged; the handler ran 11 times; 53 "
                                   "zombies left: a wait-once handler — see "
                                   "`reaper-doctor explain RD102`")
    assert [f.code for f in trace_findings(once)] == ["RD102"]
    loop = TraceResult(counts=SignalCounts(generated=64, queued=3, merged=61, delivered=3),
                       zombies_left=0, zombies_persisting=0, disposition="caught", **base)
    assert trace_findings(loop) == [] and "0 zombies left" in trace_verdict(loop)
    assert "healthy" in trace_verdict(loop)
    none = TraceResult(counts=SignalCounts(generated=64, ignored=64), zombies_left=64,
                       zombies_persisting=64, disposition="default", **base)
    assert [f.code for f in trace_findings(none)] == ["RD101"]


# ------------------------------------------------------ errors (any user)


def test_tracefs_env_pointing_at_empty_dir(tmp_path):
    env = {**os.environ, tracefs.TRACEFS_ENV: str(tmp_path)}
    line = one_error_line(run_cli("trace", str(os.getpid()), "--duration", "1", env=env))
    assert "not a tracefs mount" in line and "mount -t tracefs nodev" in line


def test_signal_events_missing(tmp_path):
    (tmp_path / "instances").mkdir()
    (tmp_path / "events").mkdir()
    env = {**os.environ, tracefs.TRACEFS_ENV: str(tmp_path)}
    line = one_error_line(run_cli("trace", str(os.getpid()), "--duration", "1", env=env))
    assert "signal:signal_generate" in line
    with pytest.raises(SignalEventsMissing):
        SignalTrace(os.getpid(), tracefs=tmp_path).start()
    assert os.listdir(tmp_path / "instances") == []


def test_not_mounted_and_permission_messages(tmp_path, monkeypatch):
    with pytest.raises(TracefsNotFound) as e:
        find_tracefs(environ={}, mountinfo="", candidates=[str(tmp_path)])
    assert "mount -t tracefs nodev /sys/kernel/tracing" in str(e.value)

    monkeypatch.setattr(tracefs, "_probe", lambda path: None)  # as if EACCES
    with pytest.raises(TracefsPermissionError) as e:
        find_tracefs(environ={}, mountinfo="", candidates=[str(tmp_path)])
    assert "run as root" in str(e.value)


@pytest.mark.parametrize("args", [["99999999"], ["0"], ["abc"], ["-5"],
                                  [str(os.getpid()), "--signal", "NOPE"],
                                  [str(os.getpid()), "--interval", "0"],
                                  [str(os.getpid()), "--duration", "-1"]])
def test_bad_invocation_is_one_line(args):
    one_error_line(run_cli("trace", *args))


# --------------------------------------------------- tracing (root only)


@pytest.fixture
def trace_cli(trace_env, tracefs_root):
    """Start `reaper-doctor trace ...`; return it once it says it is tracing."""
    started: list[subprocess.Popen] = []

    def _start(*args: str) -> tuple[subprocess.Popen, Path]:
        proc = subprocess.Popen([sys.executable, "-m", "reaper_doctor", "trace", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=trace_env, start_new_session=True)
        started.append(proc)
        line = proc.stderr.readline()  # blocks until the trace has started (or failed)
        assert "tracing SIGCHLD" in line, line + proc.stderr.read()
        instance = Path(line.split(" in ", 1)[1].split()[0])
        assert instance == tracefs_root / "instances" / f"reaper-doctor-{proc.pid}"
        assert instance.is_dir()
        return proc, instance

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # let it remove its instance
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for leftover in tracefs.instances_of(tracefs_root, proc.pid):
            os.rmdir(leftover)
            pytest.fail(f"instance {leftover} was left behind")


def _target(spawner, mode: str, children: int = CHILDREN) -> subprocess.Popen:
    return spawner.python(TARGET, mode, str(children), stdin=subprocess.PIPE)


def _tell(proc: subprocess.Popen, command: str) -> str:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return "" if command == "exit" else proc.stdout.readline().strip()


def _finish(proc: subprocess.Popen, timeout_s: float = 30) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout_s)
    assert "Traceback" not in err, err
    return proc.returncode, json.loads(out), err


@needs_root
def test_wait_once_parent_merges_sigchld(spawner, trace_cli):
    target = _target(spawner, "once")
    cli, instance = trace_cli(str(target.pid), "--duration", "5", "--interval", "0.5",
                              "--json")
    assert _tell(target, "release") == "released"
    rc, doc, err = _finish(cli)
    runs, reaped = (int(x) for x in _tell(target, "report").split()[1::2])
    print(doc["verdict"], f"(python handler runs {runs})")
    assert doc["schema"] == "reaper-doctor/trace/1" and doc["pid"] == target.pid
    assert_documented(doc)
    assert doc["signal"] == "SIGCHLD" and doc["ended"] == "duration"
    assert doc["generated"] >= CHILDREN
    assert doc["merged"] > 0
    assert doc["delivered"] < doc["generated"]
    # CPython runs the Python handler at most once per kernel delivery.
    assert 1 <= runs <= doc["delivered"]
    assert doc["children_exited"] == CHILDREN
    assert doc["zombies_left"] == len(zombie_children(target.pid)) == CHILDREN - reaped > 0
    assert [f["code"] for f in doc["findings"]] == ["RD102"]
    assert "a wait-once handler" in doc["verdict"] and "RD102" in doc["verdict"]
    assert sum(s["generated"] for s in doc["samples"]) == doc["generated"]
    assert rc == 1
    assert not instance.exists()


@needs_root
def test_wnohang_loop_parent_leaves_no_zombie(spawner, trace_cli):
    target = _target(spawner, "loop")
    cli, instance = trace_cli(str(target.pid), "--duration", "4", "--json")
    assert _tell(target, "release") == "released"
    rc, doc, _ = _finish(cli)
    assert doc["generated"] >= CHILDREN and doc["delivered"] >= 1
    assert doc["children_exited"] == CHILDREN
    assert doc["zombies_left"] == 0 and doc["findings"] == []
    assert "healthy" in doc["verdict"]
    assert rc == 0
    assert not instance.exists()


# Forks a child every 2 ms, each exiting 5 ms later, and never reaps: every
# exit leaves a zombie that /proc shows, so none is missed. At most argv[1].
CHURN = r"""
import os, sys, time
print("ready", flush=True)
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        time.sleep(0.005)
        os._exit(0)
    time.sleep(0.002)
time.sleep(60)
"""


@needs_root
def test_children_seen_to_exit_never_outnumber_the_signals(spawner, trace_cli):
    """/proc is looked at only while the tracepoints count, and the counts
    are read after each look, so every exit seen was traced: children exited
    (a lower bound) <= SIGCHLD generated, with children exiting throughout,
    as the trace starts and as it ends."""
    target = spawner.python(CHURN, "1500")
    for _ in range(2):
        cli, instance = trace_cli(str(target.pid), "--duration", "0.5", "--json")
        _, doc, _ = _finish(cli)
        assert doc["children_exited"] > 0 and doc["generated"] > 0
        assert doc["children_exited"] <= doc["generated"], doc
        assert not instance.exists()


@needs_root
def test_text_output_and_interval_lines(spawner, trace_cli):
    target = _target(spawner, "once", 16)
    cli, instance = trace_cli(str(target.pid), "--duration", "2.5", "--interval", "0.5",
                              "--signal", "SIGCHLD")
    _tell(target, "release")
    out, err = cli.communicate(timeout=30)
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].split() == ["t_s", "generated", "merged", "delivered", "ignored",
                                "exited", "zombies"]
    assert any(line.startswith("verdict: ") for line in lines)
    assert not instance.exists()


@needs_root
def test_sigint_mid_trace_prints_summary_and_removes_instance(spawner, trace_cli):
    target = _target(spawner, "once", 8)
    cli, instance = trace_cli(str(target.pid), "--json")
    _tell(target, "release")
    wait_until(lambda: zombie_children(target.pid), what="a zombie under the target")
    cli.send_signal(signal.SIGINT)
    rc, doc, _ = _finish(cli)
    assert doc["ended"] == "interrupted"
    assert doc["generated"] >= 1
    assert rc in (0, 1)
    assert not instance.exists()


@needs_root
def test_target_exit_ends_the_trace(spawner, trace_cli):
    target = _target(spawner, "once", 0)
    cli, instance = trace_cli(str(target.pid), "--json")
    _tell(target, "exit")
    rc, doc, err = _finish(cli)
    assert doc["ended"] == "target-exited"
    assert f"PID {target.pid} exited" in err
    assert rc == 0
    assert not instance.exists()


@needs_root
def test_signal_trace_api(spawner, tracefs_root):
    """The API `lesson --trace` and `scan --trace` will call."""
    target = _target(spawner, "loop", 8)
    with SignalTrace(target.pid, signal.SIGCHLD, tracefs=tracefs_root) as tr:
        instance = tr.instance
        assert instance is not None and instance.is_dir()
        assert (instance / "events/signal/signal_generate/enable").read_text().strip() == "1"
        _tell(target, "release")
        wait_until(lambda: (tr.read(), tr.totals.generated >= 8)[1],
                   what="8 SIGCHLD generated")
        first = tr.take_interval()
        assert first.generated >= 8 and first.generated == tr.totals.generated
    assert not instance.exists()
    tr.close()  # idempotent

    with pytest.raises(ZeroDivisionError):
        with SignalTrace(target.pid, tracefs=tracefs_root) as tr:
            instance = tr.instance
            1 / 0
    assert not instance.exists()


# ------------------------------------------- the trace agrees with itself

# Forks N children on request ("N" on stdin); they exit at once and are
# never reaped, so they are born and become zombies between two looks.
FORKS_ON_REQUEST = r"""
import os, sys
print("ready", flush=True)
for line in sys.stdin:
    for _ in range(int(line)):
        if os.fork() == 0:
            os._exit(0)
    print("forked", flush=True)
"""


def test_children_never_seen_alive_count_as_exited(spawner):
    from reaper_doctor.commands.trace import ChildWatch

    proc = spawner.python(FORKS_ON_REQUEST, stdin=subprocess.PIPE)
    watch = ChildWatch(proc.pid)
    assert watch.poll() and watch.exited == 0
    assert _tell(proc, "20") == "forked"
    wait_until(lambda: len(zombie_children(proc.pid)) == 20, what="20 zombies")
    assert watch.poll()
    assert watch.exited == 20 and watch.zombies == 20
    assert watch.poll() and watch.exited == 20       # counted once


def test_zombies_left_is_one_number_or_labelled():
    from reaper_doctor.render.trace import render_text

    r = TraceResult(pid=7, signum=signal.SIGCHLD, duration_s=3.0, interval_s=1.0,
                    counts=SignalCounts(generated=100, queued=20, merged=80, delivered=20),
                    children_exited=100, zombies_left=137, zombies_persisting=107,
                    zombies_before=0, disposition="caught", ended="duration", grace_s=1.0,
                    instance="x")
    verdict = trace_verdict(r)
    assert "107 zombies left for 1 s or more (137 in all)" in verdict, verdict
    (rd102,) = trace_findings(r)
    assert "107 zombies left for 1 s or more (137 in all)" in rd102.message
    text = render_text(r, width=120)
    row = next(line for line in text.splitlines() if line.startswith("zombies left"))
    assert "137" in row and "107 of them for 1 s or more" in row, row
    assert "\x1b[" not in text and "\x1b[" in render_text(r, color=True)


def _read_pty(argv: list[str], env: dict[str, str], timeout_s: float = 30) -> str:
    """Run `argv` with its stdout on a pseudo-terminal; return what it wrote."""
    _, pieces = on_pty(argv, env, timeout_s, stream="stdout")
    return "".join(piece for _, piece in pieces)


@needs_root
def test_trace_no_color_on_a_terminal(spawner, trace_env):
    target = spawner.zombie_parent("0")
    env = {k: v for k, v in trace_env.items() if k != "NO_COLOR"}
    argv = [sys.executable, "-m", "reaper_doctor", "trace", str(target.pid), "--duration", "0.3"]
    coloured = _read_pty(argv, env)
    assert "verdict: " in coloured and "\x1b[" in coloured, coloured
    plain = _read_pty([*argv, "--no-color"], env)
    assert "verdict: " in plain and "\x1b[" not in plain, plain


@needs_root
def test_trace_of_another_signal_speaks_of_that_signal(spawner, trace_env):
    target = spawner.zombie_parent("0")
    result = run_cli("trace", str(target.pid), "--signal", "TERM", "--duration", "0.3",
                     "--no-color", env=trace_env)
    assert result.returncode == 0, result.stderr
    head = result.stdout.splitlines()[-7:]
    text = "\n".join(head)
    assert "SIGTERM disposition default" in text and "SIGCHLD" not in text, result.stdout
    doc = json.loads(run_cli("trace", str(target.pid), "--signal", "TERM", "--duration", "0.3",
                             "--json", env=trace_env).stdout)
    assert doc["signal"] == "SIGTERM" and doc["disposition"] == "default"
    assert doc["sigchld"] is None and doc["ended"] == "duration"
