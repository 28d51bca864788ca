"""What `scan`, `watch`, `explain`, `lesson` and `scenario` print for people:
every section says what was observed, and fits the terminal."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from helpers import cli_argv, run_cli, run_json, on_pty, wait_until, zombie_children

# Holds a listener, a file and a pipe; prints the listener's port.
HOLDER = r"""
import os, socket, sys, time
ls = socket.create_server(("127.0.0.1", 0))
f = open("/dev/null")
r, w = os.pipe()
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_list_fds_in_text_lists_every_descriptor(spawner):
    proc = spawner.python(HOLDER)
    port = int(proc.stdout.readline())
    result = run_cli("scan", str(proc.pid), "--grace", "0", "--list-fds")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("Descriptor list\n", 1)[1].split("\n\n", 1)[0].splitlines()
    fds = sorted(int(name) for name in os.listdir(f"/proc/{proc.pid}/fd"))
    assert section[0].startswith(f"  {proc.pid} ") and \
        section[0].endswith(f": {len(fds)} descriptors"), section[0]
    listed = {int(line.split()[0]): line.split(None, 1)[1] for line in section[1:]}
    assert sorted(listed) == fds
    for fd in fds:
        assert listed[fd].startswith(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
    listener = [text for text in listed.values() if f"127.0.0.1:{port} LISTEN" in text]
    assert len(listener) == 1 and listener[0].startswith("socket:["), listed


def test_without_list_fds_no_list(spawner):
    proc = spawner.python(HOLDER)
    result = run_cli("scan", str(proc.pid), "--grace", "0")
    assert result.returncode == 0 and "Descriptor list" not in result.stdout


def _kernel_thread() -> int | None:
    """A kernel thread's PID (PF_KTHREAD in field 9 of its stat), or None
    when none is visible (a container's PID namespace)."""
    for name in sorted(filter(str.isdigit, os.listdir("/proc")), key=int):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2:].split()[6]) & 0x00200000:
            return int(name)
    return None


def test_a_kernel_thread_has_no_ulimit_n_row(spawner):
    pid = _kernel_thread()
    if pid is None:
        pytest.skip("no kernel thread visible in this PID namespace")
    result = run_cli("scan", str(pid), "--grace", "0")
    assert result.returncode == 0, result.stderr
    head = result.stdout.splitlines()[0]
    assert head.startswith(f"PID {pid} ") and "(kernel thread, " in head, head
    assert "ulimit -n" not in result.stdout and "fds 0" not in result.stdout
    code, doc = run_json("scan", str(pid), "--grace", "0")
    target = doc["targets"][0]
    assert target["kernel_thread"] is True and target["limits"]["nofile"] is None

    proc = spawner.python(HOLDER)
    result = run_cli("scan", str(proc.pid), "--grace", "0")
    assert "kernel thread" not in result.stdout and "open files (ulimit -n)" in result.stdout
    code, doc = run_json("scan", str(proc.pid), "--grace", "0")
    assert doc["targets"][0]["kernel_thread"] is False


# A parent of three zombies whose PIDs are not contiguous: a reaped child
# takes the PID between each two.
GAPPED_ZOMBIES = r"""
import os, time
for _ in range(3):
    if os.fork() == 0:
        os._exit(0)
    gap = os.fork()
    if gap == 0:
        os._exit(0)
    os.waitpid(gap, 0)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_pid_range_only_where_the_pids_are_contiguous(spawner):
    proc = spawner.python(GAPPED_ZOMBIES)
    wait_until(lambda: len(zombie_children(proc.pid)) == 3)
    zombies = sorted(zombie_children(proc.pid))
    result = run_cli("scan", str(proc.pid), "--grace", "0")
    (line,) = [x for x in result.stdout.splitlines() if "× " in x and "<defunct>" in x]
    listed = line.split("(pids ")[1].rstrip(")")
    assert listed == ", ".join(map(str, zombies)), line


def test_pid_list_groups_only_contiguous_runs():
    from reaper_doctor.render.common import pid_list

    assert pid_list([7, 3, 5]) == "3, 5, 7"
    assert pid_list([10, 11, 12, 13, 20, 21]) == "10–13, 20, 21"
    assert pid_list(range(100, 200, 2)) == "100, 102, 104, 106, …"


def test_grace_0_never_says_persist_and_one_zombie_persists(spawner):
    proc = spawner.zombie_parent("0")
    result = run_cli("scan", str(proc.pid), "--grace", "0")
    (rd101,) = [x for x in result.stdout.splitlines() if "zombie child of PID" in x]
    assert not re.search(r"\bpersists?\b", result.stdout) and "in one sample" in rd101, rd101
    result = run_cli("scan", str(proc.pid), "--grace", "0.2")
    assert re.search(rf"\b1 zombie child of PID {proc.pid} \(\S+\) persists over ", result.stdout)
    # The interval really waited: at least the grace, more on a busy machine.
    apart = re.search(r"· 2 samples (\d+\.\d) s apart", result.stdout)
    assert apart and float(apart.group(1)) >= 0.2, result.stdout


def test_census_says_what_its_samples_checked(spawner):
    spawner.zombie_parent("0", "1")
    once = run_cli("scan", "--grace", "0").stdout
    assert "(one sample: persistence not checked)" in once
    assert "persisted" not in once and "in both samples" not in once
    twice = run_cli("scan", "--grace", "0.2").stdout
    zombies = twice.split("\nZombies: ", 1)[1].split("\n\n", 1)[0]
    # The column is there only when some parent has zombies that are not
    # in both samples; otherwise the title says they all are.
    assert "every one a zombie at both samples" in zombies.splitlines()[0] or \
        "in both samples" in zombies.splitlines()[1], zombies


# Run as PID 1 of a new PID namespace: forks two children that exit and
# stay zombies of PID 1, then scans PID 1 (itself) with the real command.
NS_INIT = r"""
import os, subprocess, sys
for _ in range(2):
    if os.fork() == 0:
        os._exit(0)
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(out.stdout + out.stderr)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a PID namespace of our own needs root and unshare(1)")
def test_scan_header_gives_the_real_wait_for_zombies_of_pid_1():
    import subprocess
    import sys

    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", NS_INIT,
            *cli_argv(), "scan", "1", "--grace", "0.5"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    head = " ".join(out.split("\n\n")[0].split())
    assert " apart (--grace 0.5; zombies of PID 1 get 3 s)" in head, out
    apart = float(head.split(" samples ")[1].split(" s apart")[0])
    assert apart >= 3.0, head


# --- Fitting the terminal --------------------------------------------------


def too_wide(text: str, width: int) -> list[str]:
    """Lines wider than `width`, but for those where a single token (a
    path, a code line) is itself too long to wrap."""
    return [line for line in text.splitlines()
            if len(line) > width and not any(len(token) > width // 2 for token in line.split())]


# A forking server that leaks every accepted socket into CLOSE_WAIT and
# never reaps: long finding messages, a zombie group, a listener.
LEAKY = r"""
import os, socket, time
ls = socket.create_server(("127.0.0.1", 0))
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
kept = []
while True:
    conn, _ = ls.accept()
    if os.fork() == 0:
        os._exit(3)
    kept.append(conn)
"""


@pytest.fixture
def leaky(spawner):
    import socket

    proc = spawner.python(LEAKY)
    port = int(proc.stdout.readline())
    for _ in range(3):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    wait_until(lambda: len(zombie_children(proc.pid)) == 3)
    return proc


@pytest.mark.parametrize("width", [80, 60])
def test_scan_fits_the_terminal(leaky, width):
    env = {**os.environ, "COLUMNS": str(width)}
    result = run_cli("scan", str(leaky.pid), "--grace", "0.2", "--list-fds", env=env)
    assert "RD101" in result.stdout and "RD201" in result.stdout, result.stdout
    assert too_wide(result.stdout, width) == []
    # A finding's message wraps under itself, ten columns in.
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if " RD201 close-wait-leak " in line)
    assert lines[head + 1].startswith(" " * 10 + "PID ") and lines[head + 2].startswith(" " * 10)
    census = run_cli("scan", "--grace", "0", env=env).stdout
    assert "Machine census" in census and too_wide(census, width) == []


def test_on_a_terminal_its_width(leaky):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    code, pieces = on_pty([*cli_argv(), "scan", str(leaky.pid), "--grace", "0", "--no-color"],
                          env, stream="stdout", columns=64)
    out = "".join(piece for _, piece in pieces).replace("\r\n", "\n")
    assert "RD201" in out and too_wide(out, 64) == [] and max(map(len, out.splitlines())) > 56


def test_without_columns_and_a_terminal_the_width_is_80(leaky):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = run_cli("scan", str(leaky.pid), "--grace", "0", env=env).stdout
    assert too_wide(out, 80) == [] and max(map(len, out.splitlines())) > 60
    wide = run_cli("scan", str(leaky.pid), "--grace", "0", env={**env, "COLUMNS": "250"}).stdout
    assert max(map(len, wide.splitlines())) > 80     # a wide terminal gets long lines


@pytest.mark.parametrize("width", [80, 60])
def test_explain_lesson_and_scenario_list_fit(width):
    env = {**os.environ, "COLUMNS": str(width)}
    for argv in (["explain"], ["scenario", "list"], ["lesson", "coalescing", "-n", "8", "-t", "1"]):
        result = run_cli(*argv, env=env)
        assert result.returncode == 0, result.stderr
        assert too_wide(result.stdout, width) == [], argv
    # The teaching texts: prose refilled; code (indented four) kept as written.
    for code in ("RD101", "RD102", "RD201", "RD401"):
        text = run_cli("explain", code, env=env).stdout
        assert [line for line in text.splitlines()
                if len(line) > width and not line.startswith("    ")] == [], code


def test_watch_fits(leaky):
    env = {**os.environ, "COLUMNS": "80"}
    result = run_cli("watch", str(leaky.pid), "--duration", "1", "--interval", "0.25", env=env)
    assert result.returncode in (0, 1), result.stderr
    assert "Summary:" in result.stdout and too_wide(result.stdout, 80) == []


def test_join_fitted_and_fill_keep_to_the_width():
    from reaper_doctor.render.width import fill, join_fitted

    label = "Orphaned zombies (waiting on PID 1 or a subreaper): "
    text = join_fitted(["1 on 1 process_api (RD103)", "4 on 77 tini"], 60, sep=", ",
                       indent=label, hang="  ")
    assert text.splitlines() == [label.rstrip(), "  1 on 1 process_api (RD103), 4 on 77 tini"]
    assert fill("holds 3 sockets of PID 1234 on port 8080", 24).splitlines() == [
        "holds 3 sockets of", "PID 1234 on port 8080"]
    path = "/a/very/long/path/" + "x" * 60
    assert fill(f"top files: {path} ×2", 40).splitlines() == ["top files:", path, "×2"]


def test_a_table_with_a_long_path_still_fits_the_width():
    # The census's Containers table: six columns whose headers are single
    # words, and a PID 1 command with a path longer than what is left.
    from reaper_doctor.render.width import fit_table

    path = "/tmp/venv-stability/bin/python"
    rows = [["-", "-", f"29759 {path} -c import os (not an init)", 3, 0, "RD104 RD105"]]
    headers = ["container", "runtime", "PID 1 (host PID, command)", "processes", "zombies",
               "verdict"]
    for width in (80, 60):
        table = fit_table(rows, headers, width)
        assert too_wide(table, width) == [], table
        lines = table.splitlines()
        rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
        start = lines[0].index("PID 1")
        end = start + len(lines[rule][start:].split(" ")[0])
        column = "".join(line[start:end].strip() for line in lines[rule + 1:])
        assert path in column, table          # broken inside, nothing lost
    wide = fit_table(rows, headers, 200)       # what fits is never broken
    assert path in wide and len(wide.splitlines()) == 3


# Catches SIGCHLD and reaps one child per handler run; after "go" on stdin
# forks a burst of children that exit at once.
WAIT_ONCE = r"""
import os, signal, sys, time
signal.signal(signal.SIGCHLD, lambda *a: os.wait())
print("ready", flush=True)
sys.stdin.readline()
for _ in range(40):
    if os.fork() == 0:
        os._exit(0)
time.sleep(60)
"""


def test_trace_and_lesson_trace_fit(spawner, trace_env, tracefs_root):
    import subprocess

    env = {**trace_env, "COLUMNS": "64"}   # the interval lines are 63 wide
    proc = spawner.python(WAIT_ONCE, stdin=subprocess.PIPE)
    tracer = subprocess.Popen([*cli_argv(), "trace", str(proc.pid), "--duration", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert tracer.stderr is not None
        tracer.stderr.readline()            # "tracing SIGCHLD of PID ..." once attached
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = tracer.communicate(timeout=60)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    assert "verdict: " in out and too_wide(out, 64) == [], out
    lesson = run_cli("lesson", "coalescing", "-n", "16", "-t", "1", "--trace", env=env)
    assert lesson.returncode == 0, lesson.stderr
    assert "merged" in lesson.stdout and too_wide(lesson.stdout, 64) == []


# --- Progress on a terminal ------------------------------------------------


def test_lesson_shows_its_progress_on_a_terminal():
    code, pieces = on_pty([*cli_argv(), "lesson", "coalescing", "-n", "8", "-t", "2",
                                  "--strategy", "wait-once", "--strategy", "waitpid-loop"])
    text = "".join(piece for _, piece in pieces)
    assert code == 0, text
    for shown in ("coalescing", "wait-once 1/2", "wait-once 2/2", "waitpid-loop 2/2", "100%"):
        assert shown in text, text


def test_scenario_progress_eta_is_sane():
    # Hung requests end in waves, all 8 of a wave at the 1 s timeout: the
    # first of each wave must not read as "one request per second".
    code, pieces = on_pty([*cli_argv(), "scenario", "run", "fd-leak", "-n", "32",
                                  "-c", "8", "--timeout", "1"], timeout_s=120)
    text = "".join(piece for _, piece in pieces)
    assert code in (0, 1) and "100%" in text, text
    end = next(t for t, piece in pieces if "100%" in piece)
    etas = [(t, sum(int(x) * 60 ** i for i, x in enumerate(reversed(m.split(":")))))
            for t, piece in pieces for m in re.findall(r"\b((?:\d\d:)?\d\d:\d\d)\b", piece)]
    assert etas, text
    for t, eta in etas:
        assert eta <= 2 * (end - t) + 2, (t, eta, end)


def test_watch_summary_says_when_sampling_was_slower_than_asked():
    from reaper_doctor.model import WatchSample
    from reaper_doctor.model.watch import WatchLimits, WatchReport
    from reaper_doctor.render.watch import summary_text

    def report(step_s: float) -> WatchReport:
        samples = tuple(WatchSample(i * step_s, 0, 10, 0, 1, None) for i in range(5))
        return WatchReport(pid=7, name="x", interval_s=0.5, samples=samples,
                           limits=WatchLimits(), rates_per_min={}, eta_s={}, findings=(),
                           ended="duration")

    assert "every 0.5 s\n" in summary_text(report(0.5))
    assert "every 1.20 s (asked 0.5 s)" in summary_text(report(1.2))
