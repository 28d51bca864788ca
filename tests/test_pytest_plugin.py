"""The pytest plugin, end to end: inner pytest runs (subprocesses) that leak
real files, sockets, pipes, children and zombies.

Every inner test that leaks a process also ends it in an atexit handler,
so the inner pytest leaves nothing behind once it has exited; the outer
test (itself checked by the plugin, and a subreaper) would fail otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import reaper_doctor

# Inner runs load the plugin explicitly, without entry points: the same
# whether or not the package is installed, and a faster start.
PROJECT_ROOT = str(Path(reaper_doctor.__file__).resolve().parent.parent)
PLUGIN = ("-p", "reaper_doctor.pytest_plugin", "-p", "no:cacheprovider")

WAIT_ZOMBIE = """
def wait_zombie(pid):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.01)
    raise AssertionError("no zombie")
"""

LEAKY = """
import atexit, os, socket, subprocess, sys, time
import pytest

KEPT = []
""" + WAIT_ZOMBIE + """

def test_file(tmp_path):
    KEPT.append(open(tmp_path / "kept-open.txt", "w"))

def test_socket():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    KEPT.extend([server, client, accepted])
    print("PORT", server.getsockname()[1])

def test_pipe():
    KEPT.append(os.pipe())

def test_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    atexit.register(lambda: (child.kill(), child.wait()))
    KEPT.append(child)

def test_zombie():
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    atexit.register(child.wait)
    KEPT.append(child)
    wait_zombie(child.pid)

def test_clean(tmp_path):
    with open(tmp_path / "closed.txt", "w") as f:
        f.write("closed")
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    with socket.create_server(("127.0.0.1", 0)):
        pass
"""


def inner_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PROJECT_ROOT, env.get("PYTHONPATH")]))
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    env.update(extra)
    return env


@pytest.fixture
def run(pytester, monkeypatch):
    """Run pytest in a subprocess in pytester's directory, plugin loaded."""
    for key, value in inner_env().items():
        monkeypatch.setenv(key, value)

    def _run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(*PLUGIN, *args, timeout=120)

    return _run


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """One inner run of LEAKY with the plugin on: (result, error text per test)."""
    where = tmp_path_factory.mktemp("leaky")
    (where / "test_leaky.py").write_text(LEAKY)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *PLUGIN, "--reaper-doctor", "-rA",
         "--reaper-doctor-grace=0.2", "test_leaky.py"],
        cwd=where, env=inner_env(), capture_output=True, text=True, timeout=120)
    blocks = dict(re.findall(r"_+ ERROR at teardown of (\w+) _+\n(.*?)(?=\n_{3,}|\n={3,}|\n- )",
                             result.stdout, re.S))
    return result, blocks


def test_leaky_run_fails_each_leaking_test_once_and_sums_up(leaky):
    result, blocks = leaky
    assert result.returncode == 1, result.stdout + result.stderr
    assert sorted(blocks) == ["test_child", "test_file", "test_pipe", "test_socket",
                              "test_zombie"], result.stdout
    assert "6 passed, 5 errors" in result.stdout
    assert re.search(r"reaper-doctor: 6 tests checked, 5 leaked \(mode fail", result.stdout)
    assert "Traceback" not in result.stdout + result.stderr


def test_kept_file_is_named_with_its_mode(leaky):
    block = leaky[1]["test_file"]
    assert "leaked 1 descriptor" in block
    assert re.search(r"fd \d+ +file +/\S+/kept-open\.txt  \(mode w, cloexec\)", block), block
    assert "reaper-doctor explain RD203" in block
    assert '@pytest.mark.reaper_doctor_allow("fds")' in block


def test_kept_sockets_are_named_with_addresses_and_state(leaky):
    result, blocks = leaky
    block = blocks["test_socket"]
    port = re.search(r"PORT (\d+)", result.stdout).group(1)
    assert "leaked 3 descriptors" in block
    assert f"TCP/IPv4 127.0.0.1:{port} LISTEN" in block
    assert re.search(rf"TCP/IPv4 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{port} ESTABLISHED", block)
    assert re.search(rf"TCP/IPv4 127\.0\.0\.1:{port} -> 127\.0\.0\.1:\d+ ESTABLISHED", block)
    assert "reaper-doctor explain RD201" in block


def test_kept_pipe_shows_both_ends(leaky):
    block = leaky[1]["test_pipe"]
    read_fd, write_fd = re.findall(r"fd (\d+) +pipe +pipe:\[\d+\]", block)
    assert f"read end; other fds on it: {write_fd}" in block
    assert f"write end; other fds on it: {read_fd}" in block


def test_unwaited_child_is_named_with_its_command_and_age(leaky):
    block = leaky[1]["test_child"]
    match = re.search(r"child +pid (\d+) +\S*python\S* -c 'import time; time.sleep\(120\)'"
                      r" +\(running for [\d.]+ s; never waited for nor killed\)", block)
    assert match, block
    assert "reaper-doctor explain RD101" in block
    assert_gone(int(match.group(1)))


def test_zombie_is_named_with_its_exit_status(leaky):
    block = leaky[1]["test_zombie"]
    match = re.search(r"zombie +pid (\d+) +python\S* +\(exit 3; exited, but nobody called "
                      r"wait\(\) on it\)", block)
    assert match, block
    assert "reaper-doctor explain RD101" in block
    assert_gone(int(match.group(1)))


def test_clean_test_passes(leaky):
    assert re.search(r"PASSED test_leaky.py::test_clean\b", leaky[0].stdout)
    assert "test_clean" not in leaky[1]


def assert_gone(pid: int) -> None:
    """The inner run ended its child at exit (atexit); a PID reused since
    by some other process is not ours (not our child, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return
    assert int(rest[1]) != os.getpid(), f"PID {pid} is still our child"


def test_allow_marker_lets_a_known_leak_pass(run, pytester):
    pytester.makepyfile("""
        import os, pytest
        KEPT = []

        @pytest.mark.reaper_doctor_allow("fds")
        def test_allowed_fds():
            KEPT.append(os.pipe())

        @pytest.mark.reaper_doctor_allow
        def test_allowed_everything():
            KEPT.append(os.pipe())

        @pytest.mark.reaper_doctor_allow("children", "zombies")
        def test_other_kinds_allowed_only():
            KEPT.append(os.pipe())

        @pytest.mark.reaper_doctor_allow("fd")
        def test_typo():
            pass
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0.1", "-rA")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_other_kinds_allowed_only*",
        "*ERROR at setup of test_typo*",
        "@pytest.mark.reaper_doctor_allow: unknown check 'fd' "
        "(choose among children, zombies, fds)",
        # test_allowed_everything is not checked at all
        "*reaper-doctor: 3 tests checked, 1 leaked*",
        "*leaked: *::test_other_kinds_allowed_only",
    ])
    assert "Warning" not in result.stdout.str()


def test_warn_mode_passes_with_a_warning(run, pytester):
    pytester.makepyfile("""
        import os
        KEPT = []

        def test_pipe():
            KEPT.append(os.pipe())
    """)
    result = run("--reaper-doctor", "--reaper-doctor-mode=warn", "--reaper-doctor-grace=0.1")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([
        "*ReaperDoctorWarning: reaper-doctor: test_warn_mode_passes_with_a_warning.py::test_pipe"
        " leaked 2 descriptors*",
        "*reaper-doctor: 1 test checked, 1 leaked (mode warn*",
    ])


def test_warn_mode_with_warnings_as_errors_is_a_teardown_error(run, pytester):
    pytester.makepyfile("""
        import os
        KEPT = []

        def test_pipe():
            KEPT.append(os.pipe())
    """)
    result = run("--reaper-doctor", "--reaper-doctor-mode=warn", "--reaper-doctor-grace=0",
                 "-W", "error::reaper_doctor.pytest_plugin.ReaperDoctorWarning")
    result.assert_outcomes(passed=1, errors=1)


def test_off_without_the_option_nothing_checked_nothing_imported(run, pytester):
    pytester.makepyfile("""
        import os, sys, pytest
        KEPT = []

        @pytest.mark.reaper_doctor_allow("fds")  # registered even when off
        def test_leaks_unnoticed():
            KEPT.append(os.pipe())

        def test_nothing_imported():
            assert "reaper_doctor.collect" not in sys.modules
            assert "psutil" not in sys.modules
    """)
    result = run("--strict-markers")
    result.assert_outcomes(passed=2)
    assert "reaper-doctor" not in result.stdout.str()


def test_ini_turns_it_on_and_the_option_off(run, pytester):
    pytester.makeini("""
        [pytest]
        reaper_doctor = true
        reaper_doctor_mode = warn
        reaper_doctor_checks = children, zombies
    """)
    pytester.makepyfile("""
        import os
        KEPT = []

        def test_fd_leak_not_checked():
            KEPT.append(os.pipe())
    """)
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*reaper-doctor: 1 test checked, 0 leaked (mode warn; "
                                 "checks children, zombies; grace 0.5 s)*"])
    result = run("--no-reaper-doctor")
    result.assert_outcomes(passed=1)
    assert "reaper-doctor:" not in result.stdout.str()


def test_bad_settings_are_usage_errors(run, pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = run("--reaper-doctor", "--reaper-doctor-checks=fds,threads")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*reaper-doctor checks: unknown check 'threads'*"])


def test_slow_teardown_within_the_grace_period_is_not_a_leak(run, pytester):
    pytester.makepyfile("""
        import os, subprocess, sys, threading, time

        def test_fd_closed_by_a_thread_soon_after():
            r, w = os.pipe()
            os.close(w)
            threading.Timer(0.1, os.close, (r,)).start()

        def test_child_reaped_by_a_thread_soon_after():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.05)"])
            threading.Thread(target=child.wait).start()
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=5")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*reaper-doctor: 2 tests checked, 0 leaked*"])


def test_broader_fixtures_own_their_resources_until_finalized(run, pytester):
    pytester.makepyfile("""
        import os, socket, subprocess, sys, pytest

        @pytest.fixture(scope="module")
        def server():
            with socket.create_server(("127.0.0.1", 0)) as s:
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                yield s
                child.kill()
                child.wait()

        LEAKED = []

        @pytest.fixture(scope="module")
        def leaky_module_fixture():
            LEAKED.append(os.pipe())
            yield

        def test_a(server, leaky_module_fixture):
            pass

        def test_b(server, capfd):
            os.write(1, b"captured")
            assert capfd.readouterr().out == "captured"

        def test_c(server):
            pass
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0.1", "-p", "no:randomly")
    # The pipe of the module fixture outlives its finalizer, which ran in
    # test_c's teardown: test_c is where it is reported.
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_c*",
                                 "*leaked 2 descriptors*",
                                 "*reaper-doctor: 3 tests checked, 1 leaked*"])


def test_failing_test_that_leaks_fails_once_with_the_leak_as_a_section(run, pytester):
    pytester.makepyfile("""
        import os
        KEPT = []

        def test_fails():
            KEPT.append(os.pipe())
            assert False
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*reaper-doctor: 1 test checked, 1 leaked*",
                                 "*leaked: *::test_fails",
                                 "left open by a test that failed*",
                                 "*test_fails leaked 2 descriptors"])


def test_each_xdist_worker_checks_its_own_tests(run, pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(**{f"test_{n}": """
        import os
        KEPT = []

        def test_clean():
            pass

        def test_leak():
            KEPT.append(os.pipe())
    """ for n in ("one", "two")})
    result = run("-p", "xdist", "-n", "2", "--reaper-doctor", "--reaper-doctor-grace=0.1")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(["*reaper-doctor: 4 tests checked, 2 leaked*"])
    # Each report names only its own test's pipe: no cross-talk between workers.
    out = result.stdout.str()
    assert out.count("ERROR at teardown of test_leak") == 2
    # (pytest >= 9.1 repeats each message in the short summary: count the
    # headers, and check that no report holds the other worker's pipe too.)
    assert "leaked 2 descriptors" in out and "leaked 4 descriptors" not in out


# ----------------------------------------------------------------------------
# The light readers, in this process


def test_describe_fds_names_each_kind(tmp_path):
    import socket

    from reaper_doctor.collect.fds import describe_fds, fd_links

    opened: list = []
    try:
        r, w = os.pipe()
        opened += [r, w]
        listener = socket.create_server(("127.0.0.1", 0))
        unbound = socket.socket()
        left, right = socket.socketpair()
        log = open(tmp_path / "log.txt", "a")
        opened += [listener, unbound, left, right, log]
        fds = [r, w, listener.fileno(), unbound.fileno(), left.fileno(), log.fileno()]
        by_fd = {d.fd: d for d in describe_fds(os.getpid(), fds)}
        assert (by_fd[r].kind, by_fd[r].peer_fds, by_fd[r].mode) == ("pipe", (w,), "r, cloexec")
        tcp = by_fd[listener.fileno()]
        assert tcp.kind == "tcp" and tcp.inet.state == "LISTEN"
        assert tcp.inet.local == listener.getsockname()
        assert by_fd[unbound.fileno()].socket_family == "AF_INET SOCK_STREAM"
        assert by_fd[left.fileno()].unix.type == "stream"
        assert by_fd[log.fileno()].mode == "w, append, cloexec"
        assert by_fd[log.fileno()].link == str(tmp_path / "log.txt")
        # asking the unbound socket itself left its descriptor open
        assert unbound.fileno() in fd_links(os.getpid())
    finally:
        for thing in opened:
            os.close(thing) if isinstance(thing, int) else thing.close()


def test_children_found_without_the_children_file(spawner):
    """The fallback for kernels without CONFIG_PROC_CHILDREN: only PIDs
    allocated since the last sample (and known children) are read."""
    from reaper_doctor.pytest_plugin import CHECKS, LeakChecker, Settings, TestState

    checker = LeakChecker(Settings("fail", frozenset(CHECKS), 0.0))
    checker.children_file = False
    state = TestState(checks=frozenset(CHECKS), before=checker.sample())
    assert not checker.leaks(state)
    live = spawner.python("print('ready', flush=True); import time; time.sleep(60)")
    dead = spawner.python("raise SystemExit(7)", wait_for_line=None)
    from helpers import wait_until, zombie_children

    wait_until(lambda: dead.pid in zombie_children(os.getpid()), what="a zombie")
    found = checker.leaks(state)
    assert [st.pid for st in found.children] == [live.pid]
    assert [st.pid for st in found.zombies] == [dead.pid]
    assert checker.last.last_pid is not None
    # Only the Popen pipe of `live` is a new descriptor.
    assert set(found.fds) == {live.stdout.fileno(), dead.stdout.fileno()}
