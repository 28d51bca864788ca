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
import textwrap
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

def test_fork():
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)

def test_grandchild():
    subprocess.run(["sh", "-c", "sleep 60 & echo $! > grandchild.pid"], check=True)

def test_clean(tmp_path):
    with open(tmp_path / "closed.txt", "w") as f:
        f.write("closed")
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    with socket.create_server(("127.0.0.1", 0)):
        pass
"""


def line_of(source: str, text: str) -> int:
    """The line number of the first line of `source` holding `text`."""
    return next(n for n, line in enumerate(source.splitlines(), 1) if text in line)


def made_at(block: str, source: str, text: str, verb: str = "made") -> bool:
    """Whether `block` names the line of `source` holding `text` as the origin."""
    return f"{verb} at test_leaky.py:{line_of(source, text)} in " in block


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
    # The inner pytest gets the environment inner_env() describes: setting
    # its keys alone would leave an outer PYTEST_ADDOPTS in force.
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
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
    assert sorted(blocks) == ["test_child", "test_file", "test_fork", "test_grandchild",
                              "test_pipe", "test_socket", "test_zombie"], result.stdout
    assert "8 passed, 7 errors" in result.stdout
    assert re.search(r"reaper-doctor: 8 tests checked, 7 leaked \(mode fail", result.stdout)
    assert "Traceback" not in result.stdout + result.stderr


def test_what_tests_left_running_is_killed_at_session_end(leaky):
    result, blocks = leaky
    for name in ("test_child", "test_fork", "test_grandchild"):
        pid = re.search(r"(?:child|fork|orphan) +pid (\d+)", blocks[name]).group(1)
        assert re.search(rf"at session end, killed pid {pid} \(\w+\), left by "
                         rf"test_leaky.py::{name}\b", result.stdout), result.stdout
        assert_gone(int(pid))


def test_kept_file_is_named_with_its_mode(leaky):
    block = leaky[1]["test_file"]
    assert "leaked 1 descriptor" in block
    assert re.search(r"fd \d+ +file +/\S+/kept-open\.txt  \(mode w, cloexec\)", block), block
    assert made_at(block, LEAKY, '"kept-open.txt"'), block
    assert "unclosed-file: close it" in block
    assert '@pytest.mark.reaper_doctor_allow("fds")' in block


def test_kept_sockets_are_named_with_addresses_and_state(leaky):
    result, blocks = leaky
    block = blocks["test_socket"]
    port = re.search(r"PORT (\d+)", result.stdout).group(1)
    assert "leaked 3 descriptors" in block
    assert f"TCP/IPv4 127.0.0.1:{port} LISTEN" in block
    assert re.search(rf"TCP/IPv4 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{port} ESTABLISHED", block)
    assert re.search(rf"TCP/IPv4 127\.0\.0\.1:{port} -> 127\.0\.0\.1:\d+ ESTABLISHED", block)
    # each socket with its own line: the listener, the client, the accepted one
    assert made_at(block, LEAKY, "socket.create_server(")
    assert made_at(block, LEAKY, "socket.create_connection(")
    assert made_at(block, LEAKY, "server.accept()")
    assert "unclosed-socket: close it" in block


def test_kept_pipe_shows_both_ends(leaky):
    block = leaky[1]["test_pipe"]
    read_fd, write_fd = re.findall(r"fd (\d+) +pipe +pipe:\[\d+\]", block)
    assert f"read end; also open in fd {write_fd}" in block
    assert f"write end; also open in fd {read_fd}" in block
    assert block.count(f"made at test_leaky.py:{line_of(LEAKY, 'os.pipe()')} in test_pipe") == 2


def test_unwaited_child_is_named_with_its_command_and_age(leaky):
    block = leaky[1]["test_child"]
    match = re.search(r"child +pid (\d+) +\S*python\S* -c 'import time; time.sleep\(120\)'"
                      r" +\(running for [\d.]+ s; never waited for nor killed\)", block)
    assert match, block
    assert made_at(block, LEAKY, "time.sleep(120)", "started")
    assert "running-child: end it and wait for it" in block
    assert_gone(int(match.group(1)))


def test_forked_child_is_named_with_the_fork(leaky):
    block = leaky[1]["test_fork"]
    assert re.search(r"fork +pid \d+ .*pytest.* \(running for", block), block
    assert made_at(block, LEAKY, "os.fork()", "forked"), block
    assert "forked-child: a forked child must end in os._exit()" in block


def test_grandchild_left_behind_comes_home_and_is_reported(leaky, tmp_path_factory):
    block = leaky[1]["test_grandchild"]
    match = re.search(r"orphan +pid (\d+) +sleep 60 ", block)
    assert match, block
    assert "orphan of a process started at test_leaky.py:" in block
    assert made_at(block, LEAKY, "sleep 60 &", "orphan of a process started"), block
    assert "orphan: a process started by the test's child outlived it" in block


def test_zombie_is_named_with_its_exit_status(leaky):
    block = leaky[1]["test_zombie"]
    match = re.search(r"zombie +pid (\d+) +python\S* +\(exit 3; exited, but nobody called "
                      r"wait\(\) on it\)", block)
    assert match, block
    assert made_at(block, LEAKY, "raise SystemExit(3)", "started"), block
    assert "zombie: it exited but nobody waited for it" in block
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
        # test_typo errors in setup: it never ran
        "*reaper-doctor: 2 tests checked, 1 leaked*",
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
                                 "  left by fixture 'leaky_module_fixture' (module scope), "
                                 "finalized in this test's teardown",
                                 "*made at test_broader_fixtures_own_their_resources_until_"
                                 "finalized.py:15 in leaky_module_fixture (fixture "
                                 "'leaky_module_fixture' (module scope)), during *::test_a",
                                 "*reaper-doctor: 3 tests checked, 1 leaked*"])


def test_a_broader_fixture_owns_only_what_its_own_setup_makes(run, pytester):
    """Setups nest: a module fixture's session-scoped dependency, asked for
    only with getfixturevalue() (in no test's closure), is set up inside it. The session fixture's
    pipe, open until the session ends, is
    not the module fixture's; the module fixture's own pipe, left open by
    its finalizer, is reported on the test whose teardown finalized it."""
    pytester.makeconftest("""
        import os, pytest

        @pytest.fixture(scope="session")
        def pool():
            read, write = os.pipe()
            yield read
            os.close(read)
            os.close(write)
    """)
    pytester.makepyfile(test_nested="""
        import os, pytest

        KEPT = []

        @pytest.fixture(scope="module")
        def conn(request):
            request.getfixturevalue("pool")
            KEPT.append(os.pipe())
            yield

        def test_a(conn):
            pass

        def test_b(conn):
            pass
    """, test_z_later="""
        def test_c(request):
            request.getfixturevalue("pool")
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_b*",
                                 "*test_b leaked 2 descriptors",
                                 "  left by fixture 'conn' (module scope), finalized in this "
                                 "test's teardown",
                                 "*made at test_nested.py:8 in conn*"])
    assert "fixture 'pool'" not in result.stdout.str()


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


def test_checked_counts_tests_whose_code_ran_and_a_failed_setup_is_not_failed_twice(
        run, pytester):
    pytester.makepyfile("""
        import os
        import pytest
        KEPT = []

        @pytest.fixture
        def broken():
            KEPT.append(os.pipe())
            raise RuntimeError("setup fails")

        @pytest.mark.skip(reason="not today")
        def test_skipped():
            pass

        def test_skips_itself():
            pytest.skip("ran, then skipped")

        def test_setup_fails(broken):
            pass

        def test_passes():
            pass
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(passed=1, skipped=2, errors=1)
    result.stdout.fnmatch_lines(["*reaper-doctor: 2 tests checked, 1 leaked*",
                                 "*leaked: *::test_setup_fails",
                                 "left open by a test that failed*",
                                 "*test_setup_fails leaked 2 descriptors"])
    assert result.stdout.str().count("ERROR at setup of test_setup_fails") == 1
    assert "ERROR at teardown" not in result.stdout.str()


def test_under_setup_only_no_test_runs_so_none_is_checked(run, pytester):
    """--setup-only sets tests up and never calls them: "checked" is then
    told by the call phase beginning (where pytest's setup stack cannot
    tell it), and is 0."""
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def value():
            return 1

        def test_with_a_fixture(value):
            pass

        def test_plain():
            pass
    """)
    result = run("--reaper-doctor", "--setup-only")
    result.stdout.fnmatch_lines(["*reaper-doctor: 0 tests checked, 0 leaked*"])


def test_a_leaked_pty_gets_the_advice_of_a_pty_not_of_a_file(run, pytester):
    source = """
        import os
        KEPT = []

        def test_pty():
            KEPT.append(os.openpty())
    """
    pytester.makepyfile(test_pty=source)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "/dev/ptmx" in out and "/dev/pts/" in out, out
    assert "unclosed-pty: close both ends: os.openpty()" in out, out
    assert "unclosed-file" not in out, out
    assert f"made at test_pty.py:{line_of(textwrap.dedent(source).strip(), 'os.openpty')} in " in out


def test_the_recorder_knows_where_pytests_machinery_begins():
    """A creation event keeps the frames below pluggy's hook dispatch only
    (fewer than 40 otherwise noted for each): fails if pluggy has moved it."""
    from reaper_doctor.pytest_plugin import origins

    assert origins._BOUNDARY is not None
    assert origins._BOUNDARY.co_name == "_multicall"


def test_the_plugins_own_modules_are_not_assertion_rewritten(run, pytester):
    """pytest reads a rewritten module back slowly (see pytest_addhooks in
    the plugin): the modules imported once the plugin has started are
    imported plainly. Fails if pytest has changed how it marks them."""
    pytester.makepyfile("""
        import sys

        def test_loaders():
            for name in ("reaper_doctor.pytest_plugin.options",
                         "reaper_doctor.pytest_plugin.checker",
                         "reaper_doctor.pytest_plugin.origins", "reaper_doctor.collect.own"):
                loader = type(sys.modules[name].__loader__).__name__
                assert loader == "SourceFileLoader", (name, loader)
    """)
    run("--reaper-doctor").assert_outcomes(passed=1)


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


def test_xdist_workers_session_end_lines_reach_the_controller(run, pytester):
    """Each worker kills what its tests left running at its session end; the
    controller prints those lines in its one summary."""
    pytest.importorskip("xdist")
    pytester.makepyfile(**{f"test_{n}": """
        import atexit, subprocess, sys

        def test_child():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            atexit.register(lambda: (child.kill(), child.wait()))

        def test_clean():
            pass
    """ for n in ("one", "two")})
    result = run("-p", "xdist", "-n", "2", "--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(passed=4, errors=2)
    out = result.stdout.str()
    assert out.count("reaper-doctor: 4 tests checked, 2 leaked") == 1
    result.stdout.fnmatch_lines_random([
        "  [[]gw?[]] at session end, killed pid * (python*), left by test_one.py::test_child",
        "  [[]gw?[]] at session end, killed pid * (python*), left by test_two.py::test_child",
        "  leaked: test_one.py::test_child", "  leaked: test_two.py::test_child"])


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


def test_children_found_without_the_children_file(spawner, request):
    """The fallback for kernels without CONFIG_PROC_CHILDREN: only PIDs
    allocated since the last sample (and known children) are read."""
    from reaper_doctor.pytest_plugin import CHECKS, LeakCheck, LeakChecker, Settings

    checker = LeakChecker(Settings("fail", frozenset(CHECKS), 0.0, origins=False))
    request.addfinalizer(checker.close)
    checker.children_file = False
    state = LeakCheck(checks=frozenset(CHECKS), before=checker.sample())
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


# ----------------------------------------------------------------------------
# Never crash, blame once and right, what the suite keeps on purpose


def test_a_test_that_fills_the_table_is_the_report_and_the_next_test_passes(run, pytester):
    pytester.makepyfile("""
        import errno, os, resource

        KEPT = []

        def test_fills_the_table():
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
            try:
                while True:
                    KEPT.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as e:
                assert e.errno == errno.EMFILE

        def test_next_one():
            assert True
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-rA")
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_fills_the_table" in out
    result.stdout.fnmatch_lines([
        "*test_fills_the_table leaked 2?? descriptors",
        "  the test filled the descriptor table: 256 descriptors open (ulimit -n 256), "
        "2?? of them new; e.g.:",
        "      fd 255   /dev/null",
        "          made at test_a_test_that_fills_the_table_is_the_report_and_the_next_test"
        "_passes.py:10 in test_fills_the_table",
        "  table-full: the test filled the descriptor table*",
    ])
    assert "ERROR at setup of test_next_one" not in out
    assert "ERROR at teardown of test_next_one" not in out
    assert "KeyError" not in out and "Traceback" not in out
    result.stdout.fnmatch_lines(["*reaper-doctor: 2 tests checked, 1 leaked*"])


def _assert_the_swap_is_reported(run, pytester, source: str) -> None:
    """test_swap (of `source`) leaks the file it opens where another
    descriptor was: reported on it, with its line; test_after is clean."""
    pytester.makepyfile(test_swap=source)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_swap*",
                                 "*test_swap.py::test_swap leaked 1 descriptor*",
                                 "*fd * file *test_swap.py*",
                                 f"*made at test_swap.py:{line_of(source, 'KEPT.append')} "
                                 "in test_swap*"])


def test_a_descriptor_swapped_at_the_same_count_is_still_seen(run, pytester):
    """The fast path compares counts; a test that closes a descriptor it did
    not open and opens another keeps the count, and is still reported (the
    descriptors made during the test are looked at one by one)."""
    source = """\
        import os
        SPARE = [os.open(os.devnull, os.O_RDONLY)]
        KEPT = []

        def test_swap():
            os.close(SPARE.pop())
            KEPT.append(open(__file__))

        def test_after():
            pass
    """
    _assert_the_swap_is_reported(run, pytester, source)


def test_a_swap_at_the_count_of_a_fixtures_setup_is_still_seen(run, pytester):
    """A module fixture's setup is read (what it owns); a test that then
    closes what the fixture opened and leaks a new descriptor on the same
    number ends at that read's count: the read may be reused, but only with
    the descriptors made since it looked at anew."""
    source = """\
        import os, pytest
        KEPT = []

        @pytest.fixture(scope="module")
        def spare():
            fd = os.open(os.devnull, os.O_RDONLY)
            yield fd

        def test_swap(spare):
            os.close(spare)
            KEPT.append(open(__file__))
            assert KEPT[0].fileno() == spare

        def test_after(spare):
            pass
    """
    _assert_the_swap_is_reported(run, pytester, source)


def test_a_descriptor_made_in_c_is_reported_without_an_origin(run, pytester):
    """select.epoll() is made in C: no wrapped function sees it. The last
    read with what the recorder saw made does not account for the count, so
    the set is read whole, and the leak is reported as having no origin."""
    pytester.makepyfile(test_c="""
        import select
        KEPT = []

        def test_epoll():
            KEPT.append(select.epoll())

        def test_after():
            pass
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_epoll*",
                                 "*test_c.py::test_epoll leaked 1 descriptor*",
                                 "*fd * epoll*",
                                 "*no Python-level origin*"])


def test_a_child_that_exits_during_a_later_test_is_blamed_once(run, pytester):
    pytester.makepyfile("""
import atexit, subprocess, sys, time

KEPT = []
""" + WAIT_ZOMBIE + """

def test_starts_it():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    atexit.register(child.wait)
    KEPT.append(child)

def test_during_which_it_exits():
    KEPT[0].stdin.close()
    wait_zombie(KEPT[0].pid)

def test_after():
    pass
""")
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-rA")
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_starts_it" in out
    assert "ERROR at teardown of test_during_which_it_exits" not in out
    result.stdout.fnmatch_lines([
        "*reaper-doctor: 3 tests checked, 1 leaked*",
        "  pid * (python*) exited during *::test_during_which_it_exits: the leaked child of "
        "*::test_starts_it; nobody waited for it",
        "  at session end, reaped zombie pid *, left by *::test_starts_it",
    ])


def test_a_leak_of_a_function_fixture_names_the_fixture(run, pytester):
    pytester.makepyfile("""
        import os, pytest

        KEPT = []

        @pytest.fixture
        def channel():
            r, w = os.pipe()
            KEPT.append(r)
            yield w
            os.close(w)

        def test_uses_it(channel):
            pass
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*test_uses_it leaked 1 descriptor",
        "*pipe*read end; the other end is in no process of the test",
        "      made at test_a_leak_of_a_function_fixture_names_the_fixture.py:7 in channel "
        "(fixture 'channel' (function scope))",
    ])


def test_a_leak_of_setupclass_names_it(run, pytester):
    pytester.makepyfile("""
        import socket, unittest

        KEPT = []

        class TestServer(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                cls.server = socket.create_server(("127.0.0.1", 0))
                KEPT.append(cls.server)

            def test_one(self):
                pass

            def test_two(self):
                pass
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of TestServer.test_two*",
        "  left by setUpClass of TestServer, finalized in this test's teardown",
        "*TCP/IPv4 127.0.0.1:* LISTEN",
        "      made at test_a_leak_of_setupclass_names_it.py:8 in TestServer.setUpClass "
        "(setUpClass of TestServer), during *::test_one",
    ])


def test_a_first_use_module_cache_is_not_reported_but_growth_is(run, pytester):
    pytester.makepyfile(helper="""
        import subprocess, sys

        WORKERS = {}

        def worker(kind):
            if kind not in WORKERS:
                WORKERS[kind] = subprocess.Popen(
                    [sys.executable, "-c", "import sys; sys.stdin.read()"],
                    stdin=subprocess.PIPE)
            return WORKERS[kind]

        def stop_all():
            for proc in WORKERS.values():
                proc.stdin.close()
                proc.wait()
    """)
    pytester.makeini("""
        [pytest]
        reaper_doctor_first_use = true
    """)
    pytester.makeconftest("""
        import helper, pytest

        @pytest.fixture(scope="session", autouse=True)
        def stop_workers():
            yield
            helper.stop_all()
    """)
    pytester.makepyfile("""
        import helper

        def test_first_use():
            helper.worker("a")

        def test_cached():
            helper.worker("a")

        def test_other_kind():
            helper.worker("b")

        def test_last():  # the session fixture stops the workers in its teardown
            pass
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-p", "no:randomly")
    result.assert_outcomes(passed=4, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_first_use" not in out
    assert "ERROR at teardown of test_cached" not in out
    # The same line makes a second worker: growth, reported.
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_other_kind*",
        "*test_other_kind leaked 1 descriptor, 1 child process",
        "      started at helper.py:7 in worker",
        "*called from *.py:10 in test_other_kind",
        "*reaper-doctor: 4 tests checked, 1 leaked*",
        "  kept from first use in *::test_first_use: pid * python*, made at helper.py:7",
    ])


HELPER_PIPE = """
    import os

    KEPT = []

    def read_end():
        read, write = os.pipe()
        os.close(write)
        KEPT.append(read)
        return read
"""


@pytest.mark.parametrize("first_use", [False, True])
def test_a_helper_leaking_a_pipe_on_each_call_is_reported(run, pytester, first_use):
    """Off (the default), the first-use baseline hides nothing: a helper
    that leaks a pipe on its first call is reported there. On, the first
    is kept as a cache and the same line making another is reported."""
    pytester.makepyfile(helper=HELPER_PIPE)
    pytester.makepyfile("""
        import helper

        def test_one():
            helper.read_end()

        def test_two():
            helper.read_end()
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-p", "no:randomly",
                 "-o", f"reaper_doctor_first_use={str(first_use).lower()}")
    out = result.stdout.str()
    assert "ERROR at teardown of test_two" in out
    assert "made at helper.py:6 in read_end" in out
    if first_use:
        result.assert_outcomes(passed=2, errors=1)
        assert "ERROR at teardown of test_one" not in out
        result.stdout.fnmatch_lines(["  kept from first use in *::test_one: pipe:* "
                                     "made at helper.py:6"])
    else:
        result.assert_outcomes(passed=2, errors=2)
        assert "ERROR at teardown of test_one" in out
        assert "kept from first use" not in out


def test_adopted_and_ini_allowed_resources_are_not_reported(run, pytester):
    pytester.makeini("""
        [pytest]
        reaper_doctor_allow_paths = */cache-*.db
        reaper_doctor_allow_commands = *keep-me*
    """)
    pytester.makepyfile("""
        import atexit, os, socket, subprocess, sys
        import reaper_doctor

        KEPT = []

        def test_adopted_socket():
            KEPT.append(reaper_doctor.adopt(socket.create_server(("127.0.0.1", 0))))

        def test_adopted_popen():
            child = reaper_doctor.adopt(subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE))
            atexit.register(lambda: (child.stdin.close(), child.wait()))

        def test_allowed_path(tmp_path):
            KEPT.append(open(tmp_path / "cache-1.db", "w"))

        def test_allowed_command():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                      "keep-me"])
            atexit.register(lambda: (child.kill(), child.wait()))

        def test_not_allowed(tmp_path):
            KEPT.append(open(tmp_path / "other.db", "w"))
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_not_allowed*",
                                 "*reaper-doctor: 5 tests checked, 1 leaked*"])


def test_a_file_closed_only_by_the_garbage_collector_is_its_own_kind(run, pytester):
    pytester.makepyfile("""
        def test_cycle(tmp_path):
            holder = {"file": open(tmp_path / "in-a-cycle.txt", "w")}
            holder["self"] = holder
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0", "-W", "error::ResourceWarning")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*test_cycle leaked 1 descriptor",
        "*/in-a-cycle.txt  (closed only by the garbage collector)",
        "      made at test_a_file_closed_only_by_the_garbage_collector_is_its_own_kind.py:2 "
        "in test_cycle",
        "  gc-closed: a reference cycle held it until gc.collect() closed it*",
    ])
    assert "pytest_plugin" not in result.stdout.str()


def test_each_xdist_leak_is_reported_once_with_its_origin(run, pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(**{f"test_{n}": """
        import os
        KEPT = []

        def test_leak():
            KEPT.append(os.pipe())

        def test_clean():
            pass
    """ for n in ("one", "two", "three")})
    result = run("-p", "xdist", "-n", "2", "--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(passed=6, errors=3)
    # The reports, without the short summary (under CI=true pytest prints
    # each error's whole message there again).
    out = result.stdout.str().split("short test summary info")[0]
    for n in ("one", "two", "three"):
        assert out.count(f"reaper-doctor: test_{n}.py::test_leak leaked 2 descriptors\n") == 1
        assert out.count(f"made at test_{n}.py:5 in test_leak") == 2   # one line per end
    result.stdout.fnmatch_lines(["*reaper-doctor: 6 tests checked, 3 leaked*"])


def test_slow_teardown_is_waited_for_only_while_something_is_in_flight(run, pytester):
    pytester.makepyfile("""
        import os

        KEPT = []

        def test_leak_with_nothing_in_flight():
            KEPT.append(os.pipe())
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=30", "--durations=0", "-vv")
    result.assert_outcomes(passed=1, errors=1)
    match = re.search(r"([\d.]+)s teardown +\S+::test_leak_with_nothing_in_flight",
                      result.stdout.str())
    assert match and float(match.group(1)) < 5, result.stdout.str()


def test_the_recorders_wrappers_stay_out_of_the_suites_tracebacks(run, pytester):
    """A call that fails inside a wrapped function (open, os.pipe, Popen...)
    shows the test's own line last, not the plugin's wrapper."""
    pytester.makepyfile(test_tb="""
        import subprocess

        def test_open():
            open("/nonexistent/reaper-doctor")

        def test_popen():
            subprocess.Popen(["/nonexistent/reaper-doctor"])
    """)
    result = run("--reaper-doctor", "--tb=long")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "FileNotFoundError" in out
    assert "origins.py" not in out, out


ORPHAN_TEST = """
    import os, signal, subprocess

    def test_orphan_is_not_ours():
        # The shell exits at once; its `sleep` is an orphan. Is it ours?
        pid = int(subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
                                 capture_output=True, text=True, check=True).stdout)
        with open("orphan.pid", "w") as f:
            f.write(str(pid))
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
            adopted = True
        except ChildProcessError:
            adopted = False
        assert not adopted, "the orphan came home to the test process"
"""


def test_the_subreaper_can_be_turned_off_for_suites_that_test_orphans(run, pytester):
    """A suite that checks who inherits its orphans (psutil's does) fails
    while the test process is a subreaper; `reaper_doctor_subreaper = false`
    gives it back the plain behaviour."""
    pytester.makepyfile(test_orphan=ORPHAN_TEST)
    run("--reaper-doctor").assert_outcomes(failed=1)
    pytester.makeini("[pytest]\nreaper_doctor_subreaper = false\n")
    result = run("--reaper-doctor")
    # Not the inner test process's: the killed orphan is a zombie of the
    # nearest subreaper above it (this suite's, when its plugin runs).
    try:
        os.waitpid(int((pytester.path / "orphan.pid").read_text()), 0)
    except ChildProcessError:
        pass
    result.assert_outcomes(passed=1)


def test_an_orphan_that_exits_in_the_test_is_reaped_not_reported(run, pytester):
    """A grandchild that outlives its parent but exits within the test
    comes home only because of the subreaper: init would have reaped it.
    Reaped, noted in the summary, not a leak."""
    pytester.makepyfile(test_orphan_exited="""
        import subprocess, time

        def test_orphan_exits():
            subprocess.run(["sh", "-c", "sleep 0.2 & exit 0"], check=True)
            time.sleep(1)
    """)
    result = run("--reaper-doctor")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "(sleep), an orphan of a process" in out and "reaped, not reported" in out, out


def test_a_forked_child_that_execd_gets_the_advice_of_a_child(run, pytester):
    """fork() then exec: no os._exit() of the test's to call; end it and wait."""
    pytester.makepyfile(test_fork_exec="""
        import os

        def test_fork_exec():
            pid = os.fork()
            if pid == 0:
                os.execvp("sleep", ["sleep", "30"])
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0.2")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "running-child:" in out and "os._exit()" not in out, out


def test_the_origin_ends_with_the_tests_own_line_however_deep_the_helpers(run, pytester):
    """A leak made four helpers down names the helper's line, the two
    callers above it, and the line in the test that called them."""
    pytester.makepyfile(helpers_deep="""
        def opener(path):
            return open(path)

        def level3(path):
            return opener(path)

        def level2(path):
            return level3(path)

        def level1(path):
            return level2(path)
    """, test_deep="""
        from helpers_deep import level1

        KEEP = []

        def test_deep(tmp_path):
            (tmp_path / "f").write_text("x")
            KEEP.append(level1(tmp_path / "f"))
    """)
    result = run("--reaper-doctor", "--reaper-doctor-grace=0")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "made at helpers_deep.py:2 in opener" in out, out
    assert "called from test_deep.py:7 in test_deep" in out, out
