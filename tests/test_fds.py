"""Descriptor findings end to end: real servers on 127.0.0.1, real clients,
`scan` as a subprocess. RD201 RD202 RD203 RD401, and none on healthy designs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest
from helpers import http_request, run_cli, run_json, wait_until
from test_scan import codes_of, findings_of

RESPONSE = 'b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n"'

# Fork per connection; the parent keeps every accepted socket (the bug) and
# reaps its children. argv[1] "shutdown": the child calls shutdown() first,
# so the leaked sockets end in TCP CLOSE, in no table (invisible to ss).
FD_LEAK_SERVER = r"""
import os, socket, sys
variant = sys.argv[1]
ls = socket.create_server(("127.0.0.1", 0), backlog=64)
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
leaked = []
while True:
    conn, _ = ls.accept()
    if os.fork() == 0:
        try:
            ls.close()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(RESPONSE)
            if variant == "shutdown":
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        finally:
            os._exit(0)
    leaked.append(conn)                    # BUG: never conn.close()
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
""".replace("RESPONSE", RESPONSE)

# One process, no fork: it accepts and keeps every connection, never closing
# one (the bug). argv[1]: its soft RLIMIT_NOFILE, 0 to keep the inherited one.
# At the limit accept() fails with EMFILE and the connections stay queued.
SINGLE_PROCESS_LEAK = r"""
import errno, resource, socket, sys, time
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
ls = socket.create_server(("127.0.0.1", 0), backlog=64)
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
held = []
while True:
    try:
        conn, _ = ls.accept()
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
        time.sleep(0.05)
        continue
    held.append(conn)                     # BUG: never conn.close()
"""

# Fork per connection. argv[1] "inherit": the child keeps the listening
# socket (RD202); "fixed": the child closes it; "leak": the child closes it,
# but the parent keeps every accepted socket (RD201). Otherwise the parent
# closes conn. It reaps in a WNOHANG loop in a SIGCHLD handler; each child
# serves one request, then holds its connection until the client closes it.
PER_CONNECTION_SERVER = r"""
import os, signal, socket, sys
variant = sys.argv[1]
def reap(*_):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
signal.signal(signal.SIGCHLD, reap)
ls = socket.create_server(("127.0.0.1", 0), backlog=64)
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
leaked = []
while True:
    try:
        conn, _ = ls.accept()
    except InterruptedError:
        continue
    if os.fork() == 0:
        try:
            if variant != "inherit":
                ls.close()
            conn.recv(4096)
            conn.sendall(RESPONSE)
            conn.recv(4096)                # until the client closes
            conn.close()
        finally:
            os._exit(0)
    if variant == "leak":
        leaked.append(conn)                # BUG: never conn.close()
    else:
        conn.close()
""".replace("RESPONSE", RESPONSE)

# Pre-fork: three workers accept on the shared listener by design.
PRE_FORK_POOL = r"""
import os, socket, time
ls = socket.create_server(("127.0.0.1", 0), backlog=64)
workers = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                conn, _ = ls.accept()
                conn.recv(4096)
                conn.sendall(RESPONSE)
                conn.recv(4096)
                conn.close()
        finally:
            os._exit(0)
    workers.append(pid)
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
for pid in workers:
    os.waitpid(pid, 0)
""".replace("RESPONSE", RESPONSE)

# Iterative server: the handler sleeps argv[1] seconds, so nobody accepts
# meanwhile (backlog 5).
ITERATIVE_SERVER = r"""
import socket, sys, time
work_s = float(sys.argv[1])
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(5)
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
while True:
    conn, _ = ls.accept()
    print("accepted", flush=True)
    time.sleep(work_s)
    conn.close()
"""

# Opens a descriptor every 10 ms (up to a bound), throughout the scan.
FD_OPENER = r"""
import os, sys, time
every_s, bound = float(sys.argv[1]), int(sys.argv[2])
held = []
print("ready", flush=True)
next_t = time.monotonic()
while len(held) < bound:
    held.append(os.open("/dev/null", os.O_RDONLY))
    next_t += every_s
    time.sleep(max(0.0, next_t - time.monotonic()))
time.sleep(120)
"""


def start_server(spawner, code: str, *args: str):
    proc = spawner.python(code, *args)
    return proc, int(proc.stdout.readline())


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def only(findings: list[dict], code: str) -> dict:
    matching = [f for f in findings if f["code"] == code]
    assert len(matching) == 1, findings
    return matching[0]


def test_rd201_parent_never_closes_accepted_sockets(spawner):
    proc, port = start_server(spawner, FD_LEAK_SERVER, "close")
    base = open_fds(proc.pid)
    for _ in range(30):
        assert http_request(port) == b"ok\n"
    wait_until(lambda: open_fds(proc.pid) >= base + 30, what="30 leaked sockets")
    code, doc = run_json("scan", str(proc.pid), "--grace", "0.3")
    assert code == 1
    rd201 = only(findings_of(doc), "RD201")
    ev = rd201["evidence"]
    assert rd201["pid"] == proc.pid and rd201["severity"] == "error"
    assert ev["close_wait"] >= 30 and ev["listening_ports"] == [port]
    assert ev["close_wait_by_port"] == {str(port): ev["close_wait"]}
    assert ev["oldest_fd"] == min(ev["fds"]) and ev["oldest_by"] == "lowest fd"
    # It forks (its last child may still wait to be reaped): the advice is
    # about the parent's copy. No request came during the scan, so reaped
    # children alone might be a wrapper's, from before exec().
    assert ev["forks"] in ("children in its tree", "children reaped, maybe before exec")
    assert "by a wrapper" in rd201["message"] or ev["forks"] == "children in its tree"
    assert "close the parent's copy right after fork()" in rd201["message"]
    assert "client_connection" not in rd201["message"]
    fds = doc["targets"][0]["fds"]
    assert fds["close_wait"] >= 30 and fds["by_kind"]["tcp"] >= 31
    assert fds["tcp_states"]["CLOSE_WAIT"] == fds["close_wait"]
    assert fds["listening"][0]["address"] == f"127.0.0.1:{port}"


def test_rd201_in_a_process_that_never_forked_says_so(spawner):
    proc, port = start_server(spawner, SINGLE_PROCESS_LEAK, "0")
    base = open_fds(proc.pid)
    for _ in range(12):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    wait_until(lambda: open_fds(proc.pid) >= base + 12, what="12 accepted sockets")
    code, doc = run_json("scan", str(proc.pid), "--grace", "0.3")
    assert code == 1
    rd201 = only(findings_of(doc), "RD201")
    assert rd201["evidence"]["close_wait"] == 12 and rd201["evidence"]["forks"] is None
    message = rd201["message"]
    assert "no sign of forking" in message and "close each accepted socket" in message
    assert "fork()" not in message and "client_connection" not in message


def _scan_while_connected(pid: int, port: int, clients: int, grace: str,
                          ready: Callable[[], object]) -> tuple[int, dict]:
    """`scan --json` of `pid` while `clients` connections to `port` are open,
    once `ready()` has returned."""
    held = []
    try:
        for _ in range(clients):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        ready()
        return run_json("scan", str(pid), "--grace", grace)
    finally:
        for c in held:
            c.close()


def test_rd401_at_the_descriptor_limit_points_at_the_leak(spawner):
    proc, port = start_server(spawner, SINGLE_PROCESS_LEAK, "32")
    # 32 descriptors: about 28 connections accepted, the rest queued.
    code, doc = _scan_while_connected(
        proc.pid, port, 36, "0.3",
        lambda: wait_until(lambda: open_fds(proc.pid) == 32, what="32 of 32 descriptors"))
    assert code == 1
    rd401 = only(findings_of(doc), "RD401")
    ev, message = rd401["evidence"], rd401["message"]
    assert ev["at_fd_limit"] is True and ev["queue"] >= 1
    assert "at its descriptor limit (32 of 32, ulimit -n)" in message
    assert "EMFILE" in message and "RD301" in message
    assert "concurrently" not in message
    assert "RD301" in codes_of(doc)


def test_rd201_reaped_children_before_exec_are_not_proof_of_forking(spawner):
    """stat cminflt (faults of reaped children) survives exec(): a server
    that never forks, started by a shell that ran a command first, has it.
    The advice says what that does and does not prove."""
    proc = subprocess.Popen(["/bin/sh", "-c", '/bin/true; exec "$0" -c "$1" 0',
                             sys.executable, SINGLE_PROCESS_LEAK],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    spawner.started.append(proc)
    assert proc.stdout.readline().strip() == "ready"
    port = int(proc.stdout.readline())
    base = open_fds(proc.pid)
    for _ in range(3):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    wait_until(lambda: open_fds(proc.pid) >= base + 3, what="3 accepted sockets")
    code, doc = run_json("scan", str(proc.pid), "--grace", "0.3")
    rd201 = only(findings_of(doc), "RD201")
    assert rd201["evidence"]["forks"] == "children reaped, maybe before exec"
    assert "or by a wrapper that ran commands before exec()ing it" in rd201["message"]
    assert "if it serves connections itself, close each one" in rd201["message"]


def test_rd201_children_reaped_during_the_scan_or_a_handler_prove_forking(spawner):
    from reaper_doctor.commands.scan import scan

    proc, port = start_server(spawner, PER_CONNECTION_SERVER, "leak")
    children = f"/proc/{proc.pid}/task/{proc.pid}/children"
    for _ in range(3):
        assert http_request(port) == b"ok\n"
    wait_until(lambda: not open(children).read().split(), what="the children reaped")
    # Idle: no child now, none reaped during the scan; but a SIGCHLD
    # handler, which exec() resets, is this program's own.
    rd201 = only(findings_of(run_json("scan", str(proc.pid), "--grace", "0.3")[1]), "RD201")
    assert rd201["evidence"]["forks"] == "children reaped, SIGCHLD caught"
    assert "it catches SIGCHLD and children were reaped in it, so it forks" in rd201["message"]
    requested: list[bool] = []

    def request_then_sleep(seconds: float) -> None:
        if not requested:   # after the first sample: one child, forked and reaped
            requested.append(True)
            assert http_request(port) == b"ok\n"
            wait_until(lambda: not open(children).read().split(), what="the child reaped")
        time.sleep(seconds)

    report = scan([proc.pid], grace_s=0.3, sleep=request_then_sleep)
    (rd201,) = [f for f in report.targets[0].findings if f.code == "RD201"]
    assert rd201.evidence["forks"] == "children reaped during the scan"
    assert "it reaped children during the scan, so it forks" in rd201.message


def test_rd201_after_shutdown_although_ss_and_psutil_see_nothing(spawner):
    import psutil

    proc, port = start_server(spawner, FD_LEAK_SERVER, "shutdown")
    base = open_fds(proc.pid)
    for _ in range(30):
        assert http_request(port) == b"ok\n"
    wait_until(lambda: open_fds(proc.pid) >= base + 30, what="30 leaked sockets")
    # What ss and psutil show once each child's shutdown() has run: the listener only.
    wait_until(lambda: {c.status for c in psutil.Process(proc.pid).net_connections("tcp")}
               == {"LISTEN"}, what="psutil to see only the listener")
    code, doc = run_json("scan", str(proc.pid), "--grace", "0.3")
    assert code == 1
    ev = only(findings_of(doc), "RD201")["evidence"]
    assert ev["shut_down"] >= 30 and ev["close_wait"] == 0
    assert ev["shut_down_min"] == 10
    fds = doc["targets"][0]["fds"]
    assert fds["closed_tcp"] >= 30 and fds["close_wait"] == 0
    text = run_cli("scan", str(proc.pid), "--grace", "0.2", "--no-color").stdout
    assert "invisible to ss" in text and "RD201" in text


def _hold_connections(port: int, n: int) -> list[socket.socket]:
    held = []
    try:
        for _ in range(n):
            held.append(http_request(port, close=False))
    except BaseException:
        for s in held:
            s.close()
        raise
    return held


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children() if c.status() != "zombie"]


def test_rd202_children_keep_the_listener(spawner):
    proc, port = start_server(spawner, PER_CONNECTION_SERVER, "inherit")
    held = _hold_connections(port, 3)
    try:
        wait_until(lambda: len(_children(proc.pid)) == 3, what="3 live children")
        code, doc = run_json("scan", str(proc.pid), "--grace", "0.3")
    finally:
        for s in held:
            s.close()
    rd202 = only(findings_of(doc), "RD202")
    assert rd202["severity"] == "info" and rd202["pid"] == proc.pid
    assert rd202["evidence"]["port"] == port and rd202["evidence"]["children"] == 3
    assert "close the listening socket in the child" in rd202["message"]
    assert "RD201" not in codes_of(doc)
    assert code == 0  # info only


def test_no_rd202_for_a_child_born_between_the_samples(spawner):
    """A fork server's child holds the listener from fork() until it closes
    it; on a starved CPU the second sample may catch that moment. A child
    the first sample did not see has not held it for the window."""
    from reaper_doctor.commands.scan import scan

    proc, port = start_server(spawner, PER_CONNECTION_SERVER, "inherit")
    held: list[socket.socket] = []

    def connect_then_sleep(seconds: float) -> None:
        if not held:   # after the first sample: a child that keeps the listener
            held.extend(_hold_connections(port, 2))
            wait_until(lambda: len(_children(proc.pid)) == 2, what="2 live children")
        time.sleep(seconds)

    try:
        report = scan([proc.pid], grace_s=0.3, sleep=connect_then_sleep)
        (target,) = report.targets
        assert len(target.snapshot.children_of(proc.pid)) == 2  # seen by the second sample
        assert "RD202" not in {f.code for f in target.findings}, target.findings
        # The same children seen twice are a finding.
        later = scan([proc.pid], grace_s=0.3)
        assert "RD202" in {f.code for f in later.targets[0].findings}
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("server,args", [(PER_CONNECTION_SERVER, ("fixed",)),
                                         (PRE_FORK_POOL, ())], ids=["fixed-fork", "pre-fork"])
def test_no_rd20x_on_correct_and_pre_fork_servers(spawner, server, args):
    proc, port = start_server(spawner, server, *args)
    for _ in range(10):
        assert http_request(port) == b"ok\n"
    held = _hold_connections(port, 2)      # busy children with their own connection
    try:
        wait_until(lambda: len(_children(proc.pid)) >= 2, what="live children")
        code, doc = run_json("scan", str(proc.pid), "--grace", "0.5")
    finally:
        for s in held:
            s.close()
    assert not {"RD201", "RD202", "RD203", "RD401"} & codes_of(doc), findings_of(doc)
    assert code == 0


def test_rd203_descriptors_added_throughout_the_scan(spawner):
    proc = spawner.python(FD_OPENER, "0.01", "2000")        # 100 per second
    code, doc = run_json("scan", str(proc.pid), "--grace", "1.0")
    assert code == 1
    rd203 = only(findings_of(doc), "RD203")
    ev = rd203["evidence"]
    assert rd203["pid"] == proc.pid and rd203["severity"] == "warning"
    assert ev["samples"] == 4 and len(ev["counts"]) == 4
    assert all(b - a >= 3 for a, b in zip(ev["counts"], ev["counts"][1:]))
    # The true rate is 100/s; a busy machine delays the opener, never speeds it.
    assert 20 <= ev["rate_per_s"] <= 130, ev
    assert ev["soft"] and ev["eta_s"] is not None and ev["eta_s"] > 0


def test_no_rd203_when_descriptors_stay_put(spawner):
    proc = spawner.python(FD_OPENER, "0.001", "50")          # 50 fds, then steady
    wait_until(lambda: open_fds(proc.pid) >= 53, what="50 descriptors")
    code, doc = run_json("scan", str(proc.pid), "--grace", "0.6")
    assert "RD203" not in codes_of(doc) and code == 0


def test_rd401_iterative_server_with_a_sleeping_handler(spawner):
    proc, port = start_server(spawner, ITERATIVE_SERVER, "60")
    code, doc = _scan_while_connected(
        proc.pid, port, 4, "0.5",
        lambda: proc.stdout.readline().strip() == "accepted" or pytest.fail("not accepted"))
    assert code == 1
    rd401 = only(findings_of(doc), "RD401")
    ev = rd401["evidence"]
    assert rd401["pid"] == proc.pid and ev["port"] == port
    assert ev["queue"] == 3 and ev["queue_first"] == 3
    assert ev["backlog"] in (5, None)     # inet_diag is optional
    assert ev["waited_whole_window"] in (3, None)
    (listening,) = doc["targets"][0]["fds"]["listening"]
    assert listening["accept_queue"] == 3


def _scan_while_fed(pid: int, port: int, every_s: float, most: int,
                    ready: Callable[[list[socket.socket]], object]) -> tuple[int, dict]:
    """`scan --json --grace 1.0` of `pid` while a thread opens a connection
    to `port` every `every_s` (at most `most`, never sending), once
    `ready(clients so far)` holds."""
    stop = threading.Event()
    clients: list[socket.socket] = []

    def feed() -> None:
        while not stop.is_set() and len(clients) < most:
            c = socket.socket()
            clients.append(c)
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            stop.wait(every_s)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: ready(clients), what="the clients to queue")
        return run_json("scan", str(pid), "--grace", "1.0")
    finally:
        stop.set()
        feeder.join()
        for c in clients:
            c.close()


def test_rd401_when_the_queue_turns_over_but_never_empties(spawner):
    # A connection every 50 ms: the queue turns over in about 0.3 s, while
    # clients keep arriving faster than that.
    proc, port = start_server(spawner, ITERATIVE_SERVER, "0.05")
    code, doc = _scan_while_fed(proc.pid, port, 0.02, 300, lambda clients: len(clients) >= 20)
    rd401 = only(findings_of(doc), "RD401")
    ev = rd401["evidence"]
    assert len(ev["queue_samples"]) == 4 and min(ev["queue_samples"]) >= 1, ev
    assert "non-empty in all 4 samples" in rd401["message"]
    assert code == 1


# A healthy fork server (the child closes its connection by exiting, the
# kernel reaps it) at nice 19 on one CPU, beside two children of its own
# that spin at nice 0 on the same CPU (in its session: with autogroup, nice
# weighs only within a session). It gets about 1 % of the CPU, accepts
# whenever it runs, and is behind.
STARVED_FORK_SERVER = r"""
import os, signal, socket, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for _ in range(2):
    if os.fork() == 0:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass
        os._exit(0)
os.nice(19)
ls = socket.create_server(("127.0.0.1", 0), backlog=128)
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
while True:
    conn, _ = ls.accept()
    if os.fork() == 0:
        os._exit(0)
    conn.close()
"""


def accept_queue(port: int) -> int | None:
    """rx_queue of the LISTEN row of 127.0.0.1:`port` in /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return None


def test_no_rd401_for_a_fork_server_starved_of_cpu(spawner):
    """Its queue never empties, yet it accepts whenever it gets the CPU:
    running or waiting for a CPU whenever the queue is read, it is behind,
    not stuck in a handler."""
    cpu = min(os.sched_getaffinity(0))
    proc, port = start_server(spawner, STARVED_FORK_SERVER, str(cpu))
    # 100 connections a second: it accepts a few.
    code, doc = _scan_while_fed(proc.pid, port, 0.01, 400,
                                lambda _: (accept_queue(port) or 0) >= 20)
    (listening,) = doc["targets"][0]["fds"]["listening"]
    assert listening["accept_queue"] > 0          # the queue alone would say RD401
    assert "RD401" not in codes_of(doc), findings_of(doc)


MANY_FDS = r"""
import os, resource, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(3000)]
held += [fd for _ in range(1000) for fd in os.pipe()]
srv = socket.create_server(("127.0.0.1", 0))
conns = [(socket.create_connection(srv.getsockname()), srv.accept()[0]) for _ in range(200)]
print("ready", flush=True)
import time; time.sleep(120)
"""


def test_text_stays_one_screen_with_thousands_of_descriptors(spawner):
    proc = spawner.python(MANY_FDS)
    result = run_cli("scan", str(proc.pid), "--grace", "0", "--no-color")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) < 60, result.stdout                # counts, not a line per fd
    _, doc = run_json("scan", str(proc.pid), "--grace", "0")
    fds = doc["targets"][0]["fds"]
    assert fds["open"] >= 5401
    assert any(f"{fds['open']} open" in line for line in lines), result.stdout
    assert fds["by_kind"]["pipe"] >= 2000 and fds["by_kind"]["tcp"] == 401  # + stdout pipe
    assert "list" not in fds
    _, full = run_json("scan", str(proc.pid), "--grace", "0", "--list-fds")
    assert len(full["targets"][0]["fds"]["list"]) == fds["open"]
