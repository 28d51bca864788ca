"""The scenario scripts, run alone with python: they print their address,
serve a request, end by themselves, and reproduce their bug."""

from __future__ import annotations

import ast
import io
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import tokenize

import psutil
import pytest
from helpers import live_children, wait_until, zombie_children
from namespaces import namespace_skip_reason, needs_namespaces, ns_pids
from scenario_servers import read_until, start_scenario

from reaper_doctor.catalog import CODES
from reaper_doctor.commands.scenario import script_path, scripts_dir
from reaper_doctor.model.scenario import SCENARIOS, get
from reaper_doctor.system.load import drive, one_request

NAMES = sorted(SCENARIOS)


# -- the registry --------------------------------------------------------------

def test_registry_lists_the_scenarios() -> None:
    assert set(SCENARIOS) == {"blocking", "zombie-leak", "lost-sigchld", "fd-leak",
                              "fixed-fork", "event-loop", "container-init",
                              "container-init-fixed"}
    for s in SCENARIOS.values():
        assert set(s.expected) <= set(CODES)
        assert s.reproduces and s.fix
    assert SCENARIOS["fixed-fork"].expected == () and SCENARIOS["event-loop"].expected == ()


def test_script_path_finds_every_script() -> None:
    for name in NAMES:
        assert script_path(name).is_file()
        assert script_path(name).parent == scripts_dir()
    assert get("zombie_leak") is get("Zombie-Leak") is SCENARIOS["zombie-leak"]
    with pytest.raises(KeyError):
        script_path("no-such-scenario")


# -- the scripts as teaching material -------------------------------------------

def _code_lines(source: str) -> int:
    """Lines holding code: docstrings, comments and blank lines not counted."""
    tree = ast.parse(source)
    doc_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) \
                and ast.get_docstring(node) is not None:
            doc_lines.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in doc_lines)
    return len(lines)


@pytest.mark.parametrize("name", NAMES)
def test_script_is_short_stdlib_only_and_documented(name: str) -> None:
    source = script_path(name).read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    assert "Fix" in doc, f"{name}: the docstring must name the fix"
    assert _code_lines(source) <= 80
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    # A scenario may build on another one (the fixed container runs the
    # container_init.py server): the scripts ship side by side.
    siblings = {path.stem for path in scripts_dir().glob("*.py")}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"} | siblings, imported
    assert "0.0.0.0" not in source
    assert '"127.0.0.1"' in source or imported & siblings   # its server binds loopback


# -- the scripts run alone ---------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_script_prints_its_address_and_serves_a_request(spawner, name: str) -> None:
    if SCENARIOS[name].needs_pid_namespace:
        needs_namespaces()
    proc, port = start_scenario(spawner, name, lifetime_s=20)
    # fd-leak never sends EOF (that is its bug): read until the body instead.
    if name == "fd-leak":
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = read_until(sock.fileno(), b"hello from pid", timeout_s=10)
        assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"content-length" not in reply.lower()
    else:
        outcome = one_request("127.0.0.1", port, timeout_s=10)
        assert outcome.outcome == "ok", outcome
    assert proc.poll() is None


def test_scripts_end_by_themselves(spawner) -> None:
    names = [name for name in NAMES
             if not (SCENARIOS[name].needs_pid_namespace and namespace_skip_reason())]
    procs = [start_scenario(spawner, name, lifetime_s=1)[0] for name in names]
    for name, proc in zip(names, procs):
        assert proc.wait(timeout=30) == 0, name


def test_zombie_leak_leaves_zombies(spawner) -> None:
    proc, port = start_scenario(spawner, "zombie-leak", "--work-ms", "10")
    result = drive("127.0.0.1", port, requests=8, concurrency=4, timeout_s=10)
    assert result.ok == 8, result
    zombies = wait_until(lambda: len(zombie_children(proc.pid)) == 8 and zombie_children(proc.pid),
                         timeout_s=15, what="8 zombies under zombie-leak")
    assert proc.poll() is None
    assert set(zombies) <= set(zombie_children(proc.pid))   # nobody ever reaps them


def test_lost_sigchld_leaves_persistent_zombies_after_a_burst(spawner) -> None:
    proc, port = start_scenario(spawner, "lost-sigchld", "--work-ms", "20")
    result = drive("127.0.0.1", port, requests=16, concurrency=8, timeout_s=10)
    assert result.ok == 16, result
    server = psutil.Process(proc.pid)

    def all_children_exited() -> bool:
        try:
            return all(c.status() == psutil.STATUS_ZOMBIE for c in server.children())
        except psutil.NoSuchProcess:   # a child reaped while we looked: look again
            return False

    wait_until(all_children_exited, timeout_s=15, what="every child of lost-sigchld exited")
    first = set(zombie_children(proc.pid))
    assert first, "one wait() per signal reaped every child: no signal was merged"
    # Persistence is what RD102 needs: the same PIDs, still zombies a grace later.
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        time.sleep(0.1)
    later = set(zombie_children(proc.pid))
    assert later and later <= first, (first, later)


def test_fixed_fork_leaves_no_zombie_once_idle(spawner) -> None:
    proc, port = start_scenario(spawner, "fixed-fork", "--work-ms", "20")
    result = drive("127.0.0.1", port, requests=16, concurrency=8, timeout_s=10)
    assert result.ok == 16, result
    server = psutil.Process(proc.pid)
    wait_until(lambda: not server.children(), timeout_s=15,
               what="fixed-fork to reap all its children")
    assert zombie_children(proc.pid) == []


def _soft_nofile_64() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_fd_leak_reaches_emfile_and_keeps_running(spawner) -> None:
    proc, port = start_scenario(spawner, "fd-leak", "--work-ms", "0",
                                stderr=subprocess.PIPE, preexec_fn=_soft_nofile_64)
    clients: list[socket.socket] = []
    stderr = bytearray()
    try:
        # About 60 connections fill 64 descriptors; the rest wait in the queue.
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(sock)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        read_until(proc.stderr.fileno(), b"Too many open files\n", timeout_s=20, buf=stderr)
    finally:
        for sock in clients:
            sock.close()
    line = bytes(stderr).decode().strip().splitlines()
    assert len(line) == 1 and "[Errno 24] Too many open files" in line[0], line
    server = psutil.Process(proc.pid)
    assert server.num_fds() <= 64
    # It says it once, backs off, and keeps running: no hot spin on EMFILE
    # (a busy machine only lowers the server's share, never raises it).
    before = sum(server.cpu_times()[:2])
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        time.sleep(0.05)
    assert sum(server.cpu_times()[:2]) - before < 0.25
    assert proc.poll() is None


# -- the container scenarios: real PID namespaces -----------------------------------

def test_container_init_keeps_adopted_zombies_and_ignores_sigterm(spawner) -> None:
    needs_namespaces()
    proc, port = start_scenario(spawner, "container-init", "--helper-ms", "10",
                                "--stop-timeout", "2")
    pid1 = wait_until(lambda: live_children(proc.pid), what="the namespace's PID 1")[0]
    assert ns_pids(pid1) == [pid1, 1]
    result = drive("127.0.0.1", port, requests=6, concurrency=2, timeout_s=10)
    assert result.ok == 6, result
    # Each request's helper ends as a zombie of PID 1, which never reaps it.
    zombies = wait_until(lambda: len(zombie_children(pid1)) >= 6 and zombie_children(pid1),
                         timeout_s=15, what="6 zombies under the namespace's PID 1")
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        time.sleep(0.1)
    assert set(zombies) <= set(zombie_children(pid1))
    # SIGTERM from outside is dropped (no handler in PID 1): the runtime's
    # SIGKILL after --stop-timeout ends it, and the namespace with it.
    started = time.monotonic()
    proc.terminate()
    assert proc.wait(timeout=15) == 128 + signal.SIGKILL
    assert time.monotonic() - started >= 1.5
    wait_until(lambda: not os.path.exists(f"/proc/{pid1}"), what="PID 1 to be reaped")


def test_container_init_fixed_reaps_orphans_and_forwards_sigterm(spawner) -> None:
    needs_namespaces()
    proc, port = start_scenario(spawner, "container-init-fixed", "--helper-ms", "10",
                                "--stop-timeout", "10")
    init = wait_until(lambda: live_children(proc.pid), what="the namespace's PID 1")[0]
    server = wait_until(lambda: live_children(init), what="the server under the init")[0]
    assert ns_pids(init) == [init, 1] and ns_pids(server) == [server, 2]
    result = drive("127.0.0.1", port, requests=6, concurrency=2, timeout_s=10)
    assert result.ok == 6, result
    wait_until(lambda: live_children(init) == [server] and not zombie_children(init),
               timeout_s=15, what="the init to reap every helper")
    started = time.monotonic()
    proc.terminate()   # the init passes it on; the server ends; so does the init
    assert proc.wait(timeout=15) == 128 + signal.SIGTERM   # the server's own end
    assert time.monotonic() - started < 5
