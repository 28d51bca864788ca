#!/usr/bin/env python3
"""Benchmark `reaper-doctor scan` against the tools people already use.

Builds its own targets, then times whole processes (perf_counter around
subprocess.run), alternating the tools round by round and reporting
medians, because the machine is shared and single runs are noisy:

  M  a parent with 2,000 zombie children, 50 live children and as many
     descriptors as its hard RLIMIT_NOFILE allows (up to ~20,000): regular
     files, pipes, connected TCP sockets on 127.0.0.1 and CLOSE_WAIT
     sockets (a server that leaks accepted connections).
     Tools: scan PID --grace 0 --json, lsof -n -P -p, pstree -p, ps --ppid;
     and the whole-machine census (scan --grace 0 --json, no PID) while M
     is alive.
  L  a parent with 10,000 zombie children (fewer, with a message, when
     kernel.pid_max, threads-max or the pids cgroup cannot hold them).
  start-up: reaper-doctor --version against python -c "import click".

Everything it starts is reaped, on every exit path (Ctrl-C included): the
targets run in their own session, die with the benchmark
(PR_SET_PDEATHSIG), and this process is a child subreaper that reaps the
orphaned zombies after killing each target's process group.

Usage: python benchmarks/scan_bench.py [--size full|small] [--rounds N] [--json]
Works from a checkout (python benchmarks/scan_bench.py) and against an
installed package (the `reaper-doctor` beside this Python, or --reaper-doctor).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_SET_CHILD_SUBREAPER = 36

SIZES = {
    #        zombies, live, fds     L zombies
    "full": {"m": (2000, 50, 20000), "l": 10000},
    "small": {"m": (50, 3, 300), "l": 200},
}

GOALS = {  # ratio name -> the most it may be
    "M scan/lsof": 0.5,
    "L scan/pstree": 0.25,
    "version/click": 1.3,
}
CENSUS_GOAL_S = 1.0

# The target: forks its children first (so they inherit few descriptors),
# then opens the descriptors, prints one JSON line and waits for EOF on stdin.
TARGET = r"""
import ctypes, json, os, resource, signal, socket, sys, time
zombies, live, want_fds, bench_pid = (int(a) for a in sys.argv[1:5])
files = sys.argv[5:]
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
if os.getppid() != bench_pid:
    os._exit(1)   # the benchmark died before prctl took effect
me = os.getpid()
for _ in range(live):
    if os.fork() == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != me:
            os._exit(0)
        try:
            while True:
                time.sleep(3600)
        finally:
            os._exit(0)
made = []
for _ in range(zombies):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os._exit(0)
    made.append(pid)
def is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return True
    return raw[raw.rfind(b")") + 2:raw.rfind(b")") + 3] == b"Z"
pending = list(made)
deadline = time.monotonic() + 120
while pending and time.monotonic() < deadline:
    pending = [p for p in pending if not is_zombie(p)]
    if pending:
        time.sleep(0.01)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
limit = min(want_fds, hard)
if want_fds and soft < limit:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
budget = max(0, limit - len(os.listdir("/proc/self/fd")) - 16) if want_fds else 0
held, counts = [], {"file": 0, "pipe": 0, "tcp_connected": 0, "close_wait": 0}
try:
    n_files = budget * 35 // 100
    for i in range(n_files if files else 0):
        held.append(os.open(files[i % len(files)], os.O_RDONLY)); counts["file"] += 1
    for _ in range(budget * 25 // 100 // 2):
        held.extend(os.pipe()); counts["pipe"] += 2
    if budget:
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4096); held.append(srv)
        addr = srv.getsockname()
        for _ in range(budget * 25 // 100 // 2):
            c = socket.create_connection(addr); a, _ = srv.accept()
            held += [c, a]; counts["tcp_connected"] += 2
        # The leaked-accept pattern: the peer closed, this side never does.
        for _ in range(max(0, limit - len(os.listdir("/proc/self/fd")) - 8) if want_fds else 0):
            c = socket.create_connection(addr); a, _ = srv.accept()
            c.close(); held.append(a); counts["close_wait"] += 1
except OSError as e:
    counts["stopped_by"] = str(e)
counts["open"] = len(os.listdir("/proc/self/fd")) - 1
counts["nofile_soft"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
print(json.dumps({"pid": me, "zombies": len(made), "live": live, "fds": counts}), flush=True)
sys.stdin.read()
"""


class Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class Target:
    name: str
    proc: subprocess.Popen
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


class Targets:
    """Starts targets and, whatever happens, kills and reaps them all."""

    def __init__(self) -> None:
        self.started: list[Target] = []
        self.tmpdir = tempfile.mkdtemp(prefix="rd-bench-")
        self.files = []
        for i in range(8):
            path = os.path.join(self.tmpdir, f"data{i}.log")
            with open(path, "w") as f:
                f.write("x" * 100)
            self.files.append(path)

    def start(self, name: str, zombies: int, live: int, fds: int) -> Target:
        proc = subprocess.Popen(
            [sys.executable, "-c", TARGET, str(zombies), str(live), str(fds), str(os.getpid()),
             *self.files],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        target = Target(name, proc)
        self.started.append(target)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError(f"target {name} did not start (exit {proc.poll()})")
        target.info = json.loads(line)
        return target

    def stop(self, target: Target) -> None:
        proc = target.proc
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the target and its live children
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if target in self.started:
            self.started.remove(target)
        reap_orphans(keep={t.pid for t in self.started})

    def close(self) -> None:
        for target in list(reversed(self.started)):
            self.stop(target)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def my_children() -> set[int]:
    """Our children, from /proc/self/task/*/children (Linux >= 3.5)."""
    kids: set[int] = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
    except OSError:
        pass
    return kids


def reap_orphans(keep: set[int] = frozenset(), timeout_s: float = 60.0) -> int:
    """Reap the zombies a killed target left to us (we are their subreaper),
    polling with a deadline until no child is left but those in `keep`."""
    reaped, deadline = 0, time.monotonic() + timeout_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
            continue
        if not (my_children() - keep) or time.monotonic() > deadline:
            return reaped
        time.sleep(0.01)


# ----------------------------------------------------------------------------
# Capacity


def _int_file(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def tasks_on_machine() -> int:
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[1])


def zombie_capacity(margin: int = 2000) -> tuple[int, list[str]]:
    """How many more tasks this machine lets us make, and what limits it."""
    in_use = tasks_on_machine()
    caps = []
    pid_max = _int_file("/proc/sys/kernel/pid_max")
    if pid_max:
        caps.append((pid_max - in_use - margin, f"kernel.pid_max={pid_max}, {in_use} in use"))
    threads_max = _int_file("/proc/sys/kernel/threads-max")
    if threads_max:
        caps.append((threads_max - in_use - margin, f"kernel.threads-max={threads_max}"))
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "pids" in controllers.split(","):
                    base = f"/sys/fs/cgroup/pids{path}"
                    limit = _int_file(f"{base}/pids.max")
                    current = _int_file(f"{base}/pids.current")
                    if limit and current is not None:
                        caps.append((limit - current - 100, f"pids cgroup max {limit}"))
    except (OSError, ValueError):
        pass
    if os.geteuid() != 0:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if soft != resource.RLIM_INFINITY:
            caps.append((soft - in_use, f"RLIMIT_NPROC {soft} (an upper bound on our share)"))
    if not caps:
        return 10**9, []
    best = min(caps)
    return max(0, best[0]), [best[1]]


# ----------------------------------------------------------------------------
# Timing


def reaper_doctor_argv(explicit: str | None) -> tuple[list[str], dict[str, str]]:
    """The command to run and its environment: --reaper-doctor, the installed
    script beside this Python, or `python -m reaper_doctor` from the checkout."""
    env = dict(os.environ)
    if explicit:
        return explicit.split(), env
    script = os.path.join(os.path.dirname(sys.executable), "reaper-doctor")
    if os.path.exists(script):
        return [script], env
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [sys.executable, "-m", "reaper_doctor"], env


def time_run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=env, check=False)
    return time.perf_counter() - start, done.returncode


def measure(commands: dict[str, tuple[list[str], dict[str, str] | None]], rounds: int,
            log: Any) -> dict[str, dict[str, Any]]:
    """Run each command once per round, rotating the order every round."""
    names = list(commands)
    runs: dict[str, list[float]] = {n: [] for n in names}
    codes: dict[str, set[int]] = {n: set() for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            argv, env = commands[name]
            seconds, code = time_run(argv, env)
            runs[name].append(seconds)
            codes[name].add(code)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {runs[n][-1]:.3f}s" for n in names))
    return {n: {"median_s": round(statistics.median(runs[n]), 4),
                "min_s": round(min(runs[n]), 4), "max_s": round(max(runs[n]), 4),
                "runs_s": [round(x, 4) for x in runs[n]],
                "exit_codes": sorted(codes[n])} for n in names}


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    size = SIZES[args.size]
    rd, rd_env = reaper_doctor_argv(args.reaper_doctor)
    doc: dict[str, Any] = {"schema": "reaper-doctor/bench/1", "size": args.size,
                           "rounds": args.rounds, "reaper_doctor": rd, "notes": [],
                           "targets": {}, "results": {}, "ratios": {}, "goals": {}}
    doc["subreaper"] = become_subreaper()
    targets = Targets()
    try:
        # --- M ---------------------------------------------------------------
        zombies, live, fds = size["m"]
        capacity, why = zombie_capacity()
        if zombies + live > capacity:
            doc["notes"].append(f"M scaled down to {capacity - live} zombies ({'; '.join(why)})")
            zombies = max(0, capacity - live)
        log(f"starting M: {zombies} zombies, {live} live children, up to {fds} descriptors")
        m = targets.start("M", zombies, live, fds)
        m.info["processes_on_machine"] = len([e for e in os.listdir("/proc") if e.isdigit()])
        doc["targets"]["M"] = m.info
        log(f"  M = PID {m.pid}: {m.info}")
        pid = str(m.pid)
        cmds: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "scan": ([*rd, "scan", pid, "--grace", "0", "--json"], rd_env)}
        for tool, argv in (("lsof", ["lsof", "-n", "-P", "-p", pid]),
                           ("pstree", ["pstree", "-p", pid]), ("ps", ["ps", "--ppid", pid])):
            if available(tool):
                cmds[tool] = (argv, None)
            else:
                doc["notes"].append(f"{tool} not found: not measured")
        cmds["census"] = ([*rd, "scan", "--grace", "0", "--json"], rd_env)
        log("measuring M")
        doc["results"]["M"] = measure(cmds, args.rounds, log)
        targets.stop(m)

        # --- L ---------------------------------------------------------------
        zombies = size["l"]
        capacity, why = zombie_capacity()
        if zombies > capacity:
            doc["notes"].append(f"L scaled down from {zombies} to {capacity} zombies "
                                f"({'; '.join(why)})")
            log(doc["notes"][-1])
            zombies = capacity
        log(f"starting L: {zombies} zombies")
        big = targets.start("L", zombies, 0, 0)
        doc["targets"]["L"] = big.info
        pid = str(big.pid)
        cmds = {"scan": ([*rd, "scan", pid, "--grace", "0", "--json"], rd_env)}
        for tool, argv in (("pstree", ["pstree", "-p", pid]), ("lsof", ["lsof", "-n", "-P", "-p", pid]),
                           ("ps", ["ps", "--ppid", pid])):
            if available(tool):
                cmds[tool] = (argv, None)
        log("measuring L")
        doc["results"]["L"] = measure(cmds, args.rounds, log)
        targets.stop(big)

        # --- start-up --------------------------------------------------------
        log("measuring start-up")
        doc["results"]["startup"] = measure({
            "version": ([*rd, "--version"], rd_env),
            "click": ([sys.executable, "-c", "import click"], None),
            "python": ([sys.executable, "-c", "pass"], None)}, args.rounds, log)
    finally:
        targets.close()
    res = doc["results"]

    def ratio(name: str, a: dict[str, Any], x: str, y: str) -> None:
        if x in a and y in a and a[y]["median_s"]:
            doc["ratios"][name] = round(a[x]["median_s"] / a[y]["median_s"], 3)

    ratio("M scan/lsof", res["M"], "scan", "lsof")
    ratio("M scan/pstree", res["M"], "scan", "pstree")
    ratio("L scan/pstree", res["L"], "scan", "pstree")
    ratio("L scan/lsof", res["L"], "scan", "lsof")
    ratio("version/click", res["startup"], "version", "click")
    for name, goal in GOALS.items():
        if name in doc["ratios"]:
            doc["goals"][name] = {"ratio": doc["ratios"][name], "at_most": goal,
                                  "met": doc["ratios"][name] <= goal}
    census_s = res["M"]["census"]["median_s"]
    doc["goals"]["census_s"] = {"seconds": census_s, "at_most": CENSUS_GOAL_S,
                                "met": census_s <= CENSUS_GOAL_S}
    return doc


def render_text(doc: dict[str, Any]) -> str:
    lines = [f"reaper-doctor benchmark ({doc['size']}, {doc['rounds']} rounds, medians)"]
    for key in ("M", "L"):
        t = doc["targets"].get(key, {})
        desc = f"{t.get('zombies')} zombies, {t.get('live')} live children"
        if t.get("fds", {}).get("open"):
            f = t["fds"]
            desc += (f", {f['open']} fds (files {f['file']}, pipes {f['pipe']}, "
                     f"TCP {f['tcp_connected']}, CLOSE_WAIT {f['close_wait']})")
        lines.append(f"\n{key}: {desc}")
        for name, r in doc["results"].get(key, {}).items():
            lines.append(f"  {name:<8} {r['median_s']:8.3f} s   (min {r['min_s']:.3f}, "
                         f"max {r['max_s']:.3f}; exit {r['exit_codes']})")
    lines.append("\nstart-up")
    for name, r in doc["results"].get("startup", {}).items():
        lines.append(f"  {name:<8} {r['median_s']:8.3f} s")
    lines.append("\nratios")
    for name, value in doc["ratios"].items():
        goal = doc["goals"].get(name)
        verdict = f"  (goal <= {goal['at_most']}: {'met' if goal['met'] else 'NOT met'})" if goal else ""
        lines.append(f"  {name:<15} {value:6.3f}{verdict}")
    g = doc["goals"]["census_s"]
    lines.append(f"  census (no PID, M alive) {g['seconds']:.3f} s "
                 f"(goal <= {g['at_most']} s: {'met' if g['met'] else 'NOT met'})")
    for note in doc["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--reaper-doctor", help="command to run (default: the installed "
                        "script beside this Python, else python -m reaper_doctor)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        doc = run(args, log)
    except Interrupted as e:
        print(f"scan_bench: interrupted ({e}); every target was reaped", file=sys.stderr)
        return 130
    print(json.dumps(doc, indent=2) if args.json else render_text(doc), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
