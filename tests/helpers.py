"""Spawn real processes for tests and always reap them.

Every helper here registers what it starts before doing anything else with
it, so a failing assertion still leaves nothing behind (ground rule 2).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# A child that never reaps: it forks the given zombies and then sleeps. Each
# spec is an exit code, or "sig:N" for a child that kills itself with signal N.
ZOMBIE_PARENT = r"""
import os, signal, sys, time
specs = sys.argv[1:]
for spec in specs:
    pid = os.fork()
    if pid == 0:
        if spec.startswith("sig:"):
            os.kill(os.getpid(), int(spec[4:]))
        os._exit(int(spec))
print("ready", flush=True)
time.sleep(120)
"""


# A server that accepts N connections (argv[1]) whose clients then close,
# and never closes its side: N accepted sockets in CLOSE_WAIT (RD201).
CLOSE_WAIT_HOLDER = r"""
import socket, sys, time
srv = socket.create_server(("127.0.0.1", 0))
held = []
for _ in range(int(sys.argv[1])):
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.close()
    held.append(a)
print("ready", flush=True)
time.sleep(300)
"""

# Another user, for the tests that look at another user's process: a UID
# of its own (no account needed), so that tests counting nobody's tasks
# against its ulimit -u are not disturbed by these processes.
OTHER_UID = 61234

# Another user's leaks: a zombie that exited 3, and three accepted sockets
# left in CLOSE_WAIT on its listening port.
OTHER_USERS_LEAKS = """
import os, socket, sys, time
if os.fork() == 0:
    os._exit(3)
srv = socket.create_server(("127.0.0.1", 0))
held = []
for _ in range(3):
    c = socket.create_connection(srv.getsockname())
    held.append(srv.accept()[0])
    c.close()
print("ready", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 120)
"""


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0,
               interval_s: float = 0.02, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat from field 3 on: [state, ppid, pgrp,
    session, ...] (split after the last ")"); None if the process is gone.
    The tests' own /proc reader, independent of the tool's, so that a bug in
    the tool's parser cannot hide from them."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def proc_stats() -> dict[int, list[bytes]]:
    """{pid: stat_fields(pid)} for every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))) is not None:
            found[int(entry)] = fields
    return found


def children_states(pid: int) -> dict[int, str]:
    """{child pid: state letter} of `pid`'s children."""
    return {child: rest[0].decode() for child, rest in proc_stats().items()
            if int(rest[1]) == pid}


def zombie_children(pid: int) -> list[int]:
    """PIDs of `pid`'s children that are zombies."""
    return [child for child, state in children_states(pid).items() if state == "Z"]


def live_children(pid: int) -> list[int]:
    """PIDs of `pid`'s children that are not zombies."""
    return [child for child, state in children_states(pid).items() if state != "Z"]


def reap(proc: subprocess.Popen, timeout_s: float = 5.0, *, term: bool = True) -> None:
    """End `proc` and its process group: SIGTERM, wait, SIGKILL, wait (with
    `term` False, SIGKILL at once)."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL) if term else (signal.SIGKILL,):
            try:
                os.killpg(proc.pid, sig) if _own_group(proc) else proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout_s)
                break
            except subprocess.TimeoutExpired:
                continue
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _own_group(proc: subprocess.Popen) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def _group_exists(pgid: int) -> bool:
    """Whether a process group still has members (zombies count until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def as_nobody(work: Callable[[], object]) -> tuple[int, str]:
    """Run `work()` as UID/GID nobody in a forked copy of this process (the
    interpreter may not be executable for nobody), its stdout captured:
    (exit status, output). The status is SystemExit's code if `work`
    raises it, 0 if it returns, 3 on any other exception."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        code = 3
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.dup2(w, 1)
            sys.stdout = os.fdopen(1, "w")
            try:
                work()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 3
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as out:
        text = out.read()
    _, status = os.waitpid(child, 0)
    return os.WEXITSTATUS(status), text


def reap_adopted(keep: set[int] = frozenset()) -> int:
    """Reap zombie children of this process that no Popen owns; return how many."""
    reaped = 0
    for pid in zombie_children(os.getpid()):
        if pid in keep:
            continue
        try:
            os.waitpid(pid, 0)
            reaped += 1
        except ChildProcessError:
            pass
    return reaped


class Spawner:
    """Starts Python children (each in its own process group) and reaps them all."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        # Those SIGTERM would not end (a PID namespace's init without a
        # handler): waiting out reap's timeout for them is time lost.
        self.kill_at_once: set[int] = set()

    def python(self, code: str, *args: str, wait_for_line: str | None = "ready",
               **popen: Any) -> subprocess.Popen:
        """Run `code` with `python -c`; wait for its first stdout line if asked."""
        proc = subprocess.Popen([sys.executable, "-c", code, *args],
                                stdout=subprocess.PIPE, text=True,
                                start_new_session=True, **popen)
        self.started.append(proc)
        if wait_for_line is not None:
            line = proc.stdout.readline() if proc.stdout else ""
            assert line.strip() == wait_for_line, f"child said {line!r}"
        return proc

    def zombie_parent(self, *specs: str) -> subprocess.Popen:
        """A live parent holding one unreaped zombie per spec (see ZOMBIE_PARENT)."""
        proc = self.python(ZOMBIE_PARENT, *specs)
        wait_until(lambda: len(zombie_children(proc.pid)) == len(specs),
                   what=f"{len(specs)} zombies under {proc.pid}")
        return proc

    def reap_all(self) -> None:
        groups = [proc.pid for proc in self.started if _own_group(proc)]
        for proc in reversed(self.started):
            reap(proc, term=proc.pid not in self.kill_at_once)
        self.started.clear()
        self.kill_at_once.clear()
        # Waiting for a group's leader does not wait for the rest of the
        # group: its members die, and come to us (the subreaper) as zombies,
        # a moment later. reaper-doctor's pytest plugin caught the RD302
        # tests leaving one behind. So end the stragglers and reap until
        # every group is empty (a PGID is not reused while it has members).
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: reap_adopted() >= 0 and not any(map(_group_exists, groups)),
                   what=f"process groups {groups} to end")


def cli_argv() -> list[str]:
    """The installed `reaper-doctor` entry point beside this Python, or
    `python -m reaper_doctor` in a checkout that is not installed."""
    script = os.path.join(os.path.dirname(sys.executable), "reaper-doctor")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "reaper_doctor"]


def run_cli(*args: str, timeout_s: float = 60.0, **popen: Any) -> subprocess.CompletedProcess:
    """Run the real command line as a subprocess."""
    return subprocess.run([*cli_argv(), *args],
                          capture_output=True, text=True, timeout=timeout_s, **popen)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """Assert the contract for bad input: exit 2, nothing on stdout, exactly
    one `reaper-doctor: error: ...` line on stderr, no traceback; return it."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reaper-doctor: error: "), result.stderr
    return lines[0]


def run_json(*args: str, **kw: Any) -> tuple[int, dict]:
    """Run the CLI with `--json`; return its exit code and parsed document."""
    result = run_cli(*args, "--json", **kw)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def trace_instance_ready(instance: Path) -> bool:
    """True once a SignalTrace instance exists and both its events are on
    (mkdir comes first; enabling a tracepoint takes a while after it)."""
    try:
        return all((instance / "events" / "signal" / e / "enable").read_text().strip() == "1"
                   for e in ("signal_generate", "signal_deliver"))
    except OSError:
        return False


def http_request(port: int, timeout_s: float = 5.0, close: bool = True) -> socket.socket | bytes:
    """One request to 127.0.0.1:`port`, reading a Content-Length framed
    response (never to EOF: EOF readers hang on a leaked socket). Returns
    the body, or the open socket when `close` is False."""
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed early: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
    except BaseException:
        s.close()
        raise
    if not close:
        return s
    s.close()
    return body


def on_pty(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 60.0,
           stream: str = "stderr", columns: int | None = None) -> tuple[int, list[tuple[float, str]]]:
    """Run `argv` with its `stream` ("stdout" or "stderr") on a
    pseudo-terminal (`columns` wide if given), the other discarded: its exit
    code and what it wrote there, each piece with the seconds since the
    start at which it came."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    started = time.monotonic()
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: slave}
    proc = subprocess.Popen(argv, **streams, env=env, start_new_session=True)
    os.close(slave)
    pieces: list[tuple[float, str]] = []
    try:
        while time.monotonic() - started < timeout_s:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:        # EIO: the other end is closed
                    break
                if not data:
                    break
                pieces.append((time.monotonic() - started, data.decode("utf-8", "replace")))
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, pieces
