"""`reaper-doctor run -- COMMAND` on servers written here: real processes,
real sockets on loopback, and nothing left on the machine afterwards.

Each server is a short script written to a temporary folder, so the
command line names a path unique to the test: that is how a test finds the
server's processes (or proves there are none left) without trusting the
tool's own accounting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docs_reference import assert_documented
from helpers import Spawner, cli_argv, one_error_line, run_cli, stat_fields, wait_until

# A fork-per-connection HTTP server in the style of "Let's Build A Web
# Server" (webserver3c-3e): argv picks its bugs and where it binds.
#   reap|noreap   a SIGCHLD handler that loops waitpid(-1, WNOHANG), or none
#   close|keep    the parent closes its copy of the accepted socket, or not
#   HOST [PORT]   the address to bind (the port 0 unless given)
# It prints nothing (the tool finds the port in /proc) and touches
# `accepted` in its folder on its first connection.
FORK_SERVER = r'''
import os, signal, socket, sys, time

REAP, CLOSE, HOST = sys.argv[1] == "reap", sys.argv[2] == "close", sys.argv[3]
PORTS = [int(p) for p in sys.argv[4:]] or [0]
HERE = os.path.dirname(os.path.abspath(__file__))


def reap_all(signum, frame):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if REAP:
    signal.signal(signal.SIGCHLD, reap_all)
family = socket.AF_INET6 if ":" in HOST else socket.AF_INET
listeners, kept = [], []
for port in PORTS:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(64)
    srv.settimeout(1.0)
    listeners.append(srv)
srv = listeners[0]
deadline = time.monotonic() + 120          # bounded, even if nobody stops it
while time.monotonic() < deadline:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    open(os.path.join(HERE, "accepted"), "w").close()
    pid = os.fork()
    if pid == 0:
        try:
            srv.close()
            conn.settimeout(10)
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\n")
            conn.close()
        finally:
            os._exit(0)
    if CLOSE:
        conn.close()
    else:
        kept.append(conn)      # (rebinding `conn` alone would let Python close it)
'''

SMALL = ("--requests", "12", "--concurrency", "4", "--grace", "0.5")


@pytest.fixture
def server(tmp_path: Path) -> Path:
    path = tmp_path / "webserver.py"
    path.write_text(FORK_SERVER)
    return path


def processes_running(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (a path unique to the test)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry))
    return found


def in_session(sid: int) -> list[int]:
    """Every process (zombies too) whose session is `sid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (rest := stat_fields(int(entry))) is not None \
                and int(rest[3]) == sid:
            out.append(int(entry))
    return out


def run_doc(*args: str, timeout_s: float = 120) -> tuple[int, dict]:
    result = run_cli("run", *args, timeout_s=timeout_s)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def run_server_json(server: Path, *server_args: str, options: tuple[str, ...] = SMALL
                    ) -> tuple[int, dict]:
    code, doc = run_doc(*options, "--json", "--", sys.executable, str(server), *server_args)
    assert doc["schema"] == "reaper-doctor/scenario/1"
    assert_documented(doc)                      # docs/json.md#scenario-run, key by key
    assert doc["scenario"] is None
    assert doc["command"] == [sys.executable, str(server), *server_args]
    assert doc["leftover_processes"] == 0, doc["cleanup"]
    assert in_session(doc["server"]["pid"]) == []
    assert processes_running(str(server)) == []
    return code, doc


def codes(doc: dict) -> set[str]:
    return {f["code"] for f in doc["findings"]}


# -- the verdicts ------------------------------------------------------------------

def test_a_fork_server_that_never_reaps_is_rd101_exit_1(server: Path) -> None:
    code, doc = run_server_json(server, "noreap", "close", "127.0.0.1")
    assert doc["requests"] == {"sent": 12, "ok": 12, "failed": 0, "hung": 0}
    assert codes(doc) == {"RD101"}
    assert doc["scan"]["zombies"]["count"] == 12 and doc["peak"]["zombies"] == 12
    assert doc["server"]["host"] == "127.0.0.1"
    assert doc["server"]["scanned_pid"] == doc["server"]["pid"]
    assert not doc["as_expected"] and code == 1


def test_a_fork_server_that_never_closes_accepted_sockets_is_rd201(server: Path) -> None:
    # The parent's copy keeps every connection open: no reply ever ends,
    # each client gives up after 1 s and leaves a CLOSE_WAIT socket behind.
    code, doc = run_server_json(server, "reap", "keep", "127.0.0.1",
                                options=(*SMALL, "--timeout", "1"))
    assert doc["requests"]["hung"] == 12 and doc["requests"]["ok"] == 0
    assert "RD201" in codes(doc) and "RD101" not in codes(doc)
    assert doc["peak"]["close_wait"] >= 1
    assert code == 1


def test_a_correct_fork_server_is_exit_0(server: Path) -> None:
    code, doc = run_server_json(server, "reap", "close", "127.0.0.1")
    assert doc["requests"] == {"sent": 12, "ok": 12, "failed": 0, "hung": 0}
    assert doc["findings"] == [] and doc["scan"]["zombies"]["count"] == 0
    assert doc["as_expected"] and code == 0


def test_expect_turns_a_known_leak_into_success(server: Path) -> None:
    code, doc = run_server_json(server, "noreap", "close", "127.0.0.1",
                                options=(*SMALL, "--expect", "rd101"))
    assert doc["expected"] == ["RD101"] and doc["missing"] == [] and doc["as_expected"]
    assert code == 0
    code, doc = run_server_json(server, "reap", "close", "127.0.0.1",
                                options=(*SMALL, "--expect", "RD101"))
    assert doc["missing"] == ["RD101"] and code == 1


def test_a_server_bound_to_the_ipv4_wildcard_gets_load_on_127_0_0_1() -> None:
    # Binding 0.0.0.0 opens the port to the network; this test does not do
    # that (tests bind loopback only): the choice is checked on its rule.
    from reaper_doctor.commands.run import choose_endpoint, loopback_for
    from reaper_doctor.model.scenario import Listener

    assert loopback_for("0.0.0.0") == "127.0.0.1" and loopback_for("::") == "::1"
    assert loopback_for("::ffff:127.0.0.1") == "127.0.0.1"
    assert loopback_for("192.0.2.7") is None and loopback_for("127.0.0.2") is None
    wildcard = [Listener(10, "0.0.0.0", 8080, "tcp"), Listener(10, "::", 8080, "tcp6")]
    endpoint = choose_endpoint(wildcard, {10: 1})
    assert endpoint is not None and (endpoint.host, endpoint.port) == ("127.0.0.1", 8080)
    only6 = choose_endpoint([Listener(10, "::", 8080, "tcp6")], {10: 1})
    assert only6 is not None and only6.host == "::1" and only6.bound == "[::]:8080"


def test_the_scanned_process_is_the_topmost_holder_of_the_listener() -> None:
    from reaper_doctor.commands.run import choose_endpoint
    from reaper_doctor.model.scenario import Listener

    # 20 runs `sh -c`, which started the server 30; 30 forked 31 and 32,
    # which inherited the listener.
    held = [Listener(pid, "127.0.0.1", 9000, "tcp") for pid in (32, 31, 30)]
    endpoint = choose_endpoint(held, {20: 1, 30: 20, 31: 30, 32: 30})
    assert endpoint is not None and endpoint.owner == 30
    assert choose_endpoint([], {}) is None
    assert choose_endpoint(held, {}, port=9001) is None   # not yet on the wanted port


def test_several_ports_and_foreign_addresses_are_refused_in_one_line() -> None:
    from reaper_doctor.commands.run import ListenerRefused, choose_endpoint
    from reaper_doctor.model.scenario import Listener

    two = [Listener(5, "127.0.0.1", 9000, "tcp"), Listener(5, "127.0.0.1", 9100, "tcp")]
    with pytest.raises(ListenerRefused, match=r"several TCP ports \(9000, 9100\).*--port"):
        choose_endpoint(two, {})
    chosen = choose_endpoint(two, {}, port=9100)
    assert chosen is not None and chosen.port == 9100
    with pytest.raises(ListenerRefused, match=r"192\.0\.2\.7:9000 only, not on loopback"):
        choose_endpoint([Listener(5, "192.0.2.7", 9000, "tcp")], {})


@pytest.mark.parametrize("text, raw", [
    (r"PING\r\n", b"PING\r\n"), (r"a\tb\\c\0", b"a\tb\\c\0"), (r"\x41\x7f", b"A\x7f"),
    ("héllo", "héllo".encode()),
])
def test_request_text_escapes(text: str, raw: bytes) -> None:
    from reaper_doctor.parse.request import parse_request_text

    assert parse_request_text(text) == raw


@pytest.mark.parametrize("text", [r"bad\q", "", r"cut\x4", "end\\"])
def test_bad_request_text_is_one_line_exit_2(text: str) -> None:
    line = one_error_line(run_cli("run", "--request", text, "--", "true"))
    assert "--request" in line


def test_a_server_on_ipv6_loopback_gets_load_on_ipv6(server: Path) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as e:
        pytest.skip(f"cannot bind ::1 here: {e}")
    code, doc = run_server_json(server, "reap", "close", "::1")
    assert doc["server"]["host"] == "::1" and doc["server"]["bound"].startswith("[::1]:")
    assert doc["requests"]["ok"] == 12 and code == 0


def test_socat_echo_server_with_a_raw_request() -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (apt-get install socat)")
    argv = [socat, "TCP-LISTEN:0,bind=127.0.0.1,fork,reuseaddr", "EXEC:cat"]
    code, doc = run_doc(*SMALL, "--request", r"PING\r\n", "--json", "--", *argv)
    assert doc["command"] == argv and doc["load"]["request"] == "PING\r\n"
    assert doc["requests"] == {"sent": 12, "ok": 12, "failed": 0, "hung": 0}, doc["errors"]
    assert doc["findings"] == [] and doc["leftover_processes"] == 0
    assert in_session(doc["server"]["pid"]) == []
    assert code == 0


def test_several_ports_need_port(server: Path) -> None:
    with socket.socket() as probe:               # a free port, for the second listener
        probe.bind(("127.0.0.1", 0))
        second = probe.getsockname()[1]
    argv = ("--", sys.executable, str(server), "reap", "close", "127.0.0.1", "0", str(second))
    line = one_error_line(run_cli("run", *SMALL, *argv, timeout_s=60))
    assert "several TCP ports" in line and "--port" in line
    assert processes_running(str(server)) == []
    code, doc = run_doc(*SMALL, "--port", str(second), "--json", *argv)
    # The load goes to the second port, where nobody accepts: every request
    # waits in the queue until it times out.
    assert doc["server"]["port"] == second and doc["leftover_processes"] == 0
    assert processes_running(str(server)) == []


# An iterative server: one connection at a time, 200 ms each, so the others
# wait in the accept queue.
ITERATIVE_SERVER = r'''
import socket, time

srv = socket.create_server(("127.0.0.1", 0), backlog=16)
srv.settimeout(1.0)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    with conn:
        conn.settimeout(10)
        conn.recv(1024)
        time.sleep(0.2)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nslow\n")
'''


def test_an_iterative_server_is_scanned_during_the_load_rd401(tmp_path: Path) -> None:
    # Its accept queue stays non-empty only while the load runs: run sees it
    # stay in the timeline and scans then, as scenario run does for blocking.
    script = tmp_path / "iterative.py"
    script.write_text(ITERATIVE_SERVER)
    code, doc = run_doc("--requests", "24", "--concurrency", "8", "--timeout", "10",
                        "--grace", "0.5", "--json", "--", sys.executable, str(script))
    assert doc["scanned"] == "during-load", doc["timeline"]
    assert doc["peak"]["accept_queue"] >= 2
    assert "RD401" in codes(doc) and code == 1
    assert doc["leftover_processes"] == 0 and processes_running(str(script)) == []


# -- bad input: exit 2, one line ----------------------------------------------------

@pytest.mark.parametrize("args, said", [
    (("--expect", "RD999"), "--expect: unknown finding code 'RD999'"),
    (("--request", "x", "--request-file", "/etc/hostname"), "exclude each other"),
    (("--request-file", "/no/such/file"), "--request-file /no/such/file"),
    (("--port", "0"), "--port"),
    (("--startup-timeout", "0"), "--startup-timeout"),
])
def test_bad_run_options_are_one_line_exit_2(args: tuple[str, ...], said: str) -> None:
    line = one_error_line(run_cli("run", *args, "--", "true"))
    assert said in line, line


def test_request_file_is_sent_as_is(tmp_path: Path) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (apt-get install socat)")
    request = tmp_path / "request.bin"
    request.write_bytes(b"\x00binary\r\n")
    code, doc = run_doc("--requests", "4", "--concurrency", "2", "--grace", "0.3",
                        "--request-file", str(request), "--json", "--", socat,
                        "TCP-LISTEN:0,bind=127.0.0.1,fork,reuseaddr", "EXEC:cat")
    assert doc["load"]["request"] == "\x00binary\r\n"
    assert doc["requests"]["ok"] == 4 and code == 0


def test_command_not_found_is_exit_2() -> None:
    line = one_error_line(run_cli("run", "--", "no-such-command-reaper-doctor-test"))
    assert line == "reaper-doctor: error: command not found: no-such-command-reaper-doctor-test"


def test_missing_command_is_exit_2() -> None:
    one_error_line(run_cli("run"))


def test_a_command_that_exits_at_once_is_exit_2_with_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("import sys\nprint('starting', flush=True)\n"
                      "sys.stderr.write('Traceback (most recent call last):\\n')\n"
                      "sys.exit('ConfigError: no such file: server.toml')\n")
    result = run_cli("run", "--", sys.executable, str(script), timeout_s=60)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    first, *rest = result.stderr.strip().splitlines()
    assert first.startswith("reaper-doctor: error: "), first
    assert "exited with status 1 before listening" in first, first
    assert first.endswith("its output ends: ConfigError: no such file: server.toml"), first
    assert rest == ["  Traceback (most recent call last):"]   # the lines before the last
    assert processes_running(str(script)) == []


def test_a_command_killed_by_a_signal_before_listening_says_which() -> None:
    line = one_error_line(run_cli("run", "--", "sh", "-c", "kill -KILL $$", timeout_s=60))
    assert "exited with status -9 (killed by SIGKILL) before listening" in line, line


def test_a_server_that_never_listens_is_exit_2_after_the_timeout(tmp_path: Path) -> None:
    script = tmp_path / "silent.py"
    script.write_text("import time\ntime.sleep(120)\n")
    started = time.monotonic()
    result = run_cli("run", "--startup-timeout", "1", "--", sys.executable, str(script),
                     timeout_s=60)
    elapsed = time.monotonic() - started
    line = one_error_line(result)
    assert "nothing listening on a TCP port within 1 s" in line
    assert elapsed >= 1.0
    assert processes_running(str(script)) == []


def _non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine's own interfaces that is not loopback
    (from /proc/net/fib_trie's local host routes), or None."""
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return None
    for before, line in zip(lines, lines[1:]):
        if "/32 host LOCAL" in line:
            address = before.split()[-1]
            if not address.startswith("127."):
                return address
    return None


def test_a_server_on_a_non_loopback_address_only_is_refused(server: Path) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    # It binds the machine's own address; no traffic is ever sent to it.
    line = one_error_line(run_cli("run", *SMALL, "--", sys.executable, str(server),
                                  "reap", "close", address, timeout_s=60))
    assert f"listens on {address}:" in line and "not on loopback" in line
    assert not (server.parent / "accepted").exists()      # nothing connected
    assert processes_running(str(server)) == []


# -- Ctrl-C in the middle of the load -------------------------------------------------

def _default_sigint() -> None:
    # A shell's background job starts with SIGINT ignored: give the CLI a real Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_in_the_middle_of_the_load_leaves_nothing(
        spawner: Spawner, server: Path, signum: int) -> None:
    cli = subprocess.Popen([*cli_argv(), "run", "--requests", "3000", "--concurrency", "4",
                            "--json", "--", sys.executable, str(server), "noreap", "close",
                            "127.0.0.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True, preexec_fn=_default_sigint)
    spawner.started.append(cli)
    servers = wait_until(lambda: [p for p in processes_running(str(server)) if p != cli.pid],
                         timeout_s=30, what="the server under the CLI")
    pid = servers[0]

    def zombies() -> int:
        return sum(1 for p in in_session(pid) if (st := stat_fields(p)) and st[0] == b"Z")

    wait_until(lambda: zombies() >= 8, timeout_s=30, what="zombies: the load has begun")
    cli.send_signal(signum)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert b"Traceback" not in err
    assert in_session(pid) == []                 # server and every zombie reaped
    assert processes_running(str(server)) == []


# -- text ---------------------------------------------------------------------------

def test_text_output_tells_the_story(server: Path) -> None:
    # Wide enough that the temporary paths do not wrap.
    result = run_cli("run", *SMALL, "--no-color", "--", sys.executable, str(server),
                     "noreap", "close", "127.0.0.1", timeout_s=120,
                     env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 1, result.stderr
    out = result.stdout
    for text in (f"Server {sys.executable} {server} noreap close 127.0.0.1",
                 "listening on 127.0.0.1:", "Load: 12 requests, 4 at a time",
                 "Timeline (", "zombies ", "RD101 zombie-leak", "Found RD101",
                 "reaper-doctor explain RD101", "0 processes left over", "leaks: RD101"):
        assert text in out, (text, out)


# -- from Python ----------------------------------------------------------------------

def test_python_api_tells_a_leaking_server_from_a_correct_one(server: Path) -> None:
    from reaper_doctor.testing import ServerStartError, describe, document, run_under_load

    def command(*args: str) -> list[str]:
        return [sys.executable, str(server), *args, "127.0.0.1"]

    good = run_under_load(command("reap", "close"), requests=8, concurrency=4, grace_s=0.5)
    assert good.as_expected, describe(good)
    assert good.load is not None and good.load.ok == 8 and good.leftover_processes == 0
    bad = run_under_load(command("noreap", "close"), requests=8, concurrency=4, grace_s=0.5)
    assert not bad.as_expected
    assert {f.code for f in bad.unexpected} == {"RD101"}
    assert "leaks: RD101" in describe(bad)
    doc = document(bad)
    assert doc["schema"] == "reaper-doctor/scenario/1" and doc["leftover_processes"] == 0
    expected = run_under_load(command("noreap", "close"), requests=8, concurrency=4,
                              grace_s=0.5, expect=["RD101"])
    assert expected.as_expected, describe(expected)
    assert processes_running(str(server)) == []
    with pytest.raises(ServerStartError, match="command not found"):
        run_under_load(["no-such-command-reaper-doctor-test"])
