#!/usr/bin/env python3
"""Benchmark `reaper-doctor exporter` against the exporters people run.

Builds its own crowd (a parent with 3,000 sleeping children and 1,000
zombies: ~4,000 processes with the machine's own), starts on 127.0.0.1:

  reaper-doctor exporter --min-interval 0      (every scrape takes a census)
  node_exporter --collector.disable-defaults --collector.processes
  process-exporter, one group per command name

(the last two from Debian: prometheus-node-exporter,
prometheus-process-exporter; each is skipped, with a note, when missing),
and times warm HTTP scrapes of /metrics, alternating the exporters round
by round and reporting medians, because the machine is shared. Then:

  rss       the exporter's RSS before and after --rss-scrapes scrapes
            (goal: grows by less than 5 MB over 1,000)
  coverage  the census with and without its CLOSE_WAIT / accept-queue
            pass, in one process, alternating (goal: at most +20 %)

Everything it starts is killed and reaped on every exit path (the crowd
dies with the benchmark, PR_SET_PDEATHSIG; this process is a child
subreaper for the zombies).

Usage: python benchmarks/exporter_bench.py [--size full|small] [--rounds N]
       [--rss-scrapes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_bench import (  # noqa: E402 - the crowd and its clean-up are scan_bench's
    Interrupted, Targets, _raise_interrupt, become_subreaper, reaper_doctor_argv,
)

SIZES = {"full": (1000, 3000), "small": (50, 100)}   # zombies, sleeping children
GOALS = {"reaper-doctor/node_exporter": 1.0, "reaper-doctor/process-exporter": 0.1,
         "rss_growth_mb": 5.0, "coverage_overhead": 0.20}
NODE_EXPORTER = ("prometheus-node-exporter", "node_exporter")
PROCESS_EXPORTER = ("prometheus-process-exporter", "process-exporter")
PROCESS_EXPORTER_CONFIG = """process_names:
  - name: "{{.Comm}}"
    cmdline:
      - '.+'
"""

# In-process census timing with and without the socket pass: the same
# interpreter, alternating, so imports and caches are warm for both. Two
# ways: one-shot censuses (`scan` with no PID, --grace 0: every socket
# counts, nothing kept) and the exporter's (one after another, each with
# its own state and ProcessCache).
COVERAGE = r"""
import json, sys, time
from reaper_doctor.collect.machine import ProcessCache
from reaper_doctor.commands.census import census, census_after
rounds = int(sys.argv[1])
runs = {"once_with": [], "once_without": [], "exporter_with": [], "exporter_without": []}
states = {"exporter_with": None, "exporter_without": None}
caches = {"exporter_with": ProcessCache(), "exporter_without": ProcessCache()}
def once(name):
    census(grace_s=0, sockets=name.endswith("_with"))
def exporter(name):
    _, states[name] = census_after(states[name], grace_s=1, cache=caches[name],
                                   sockets=name.endswith("_with"))
for name in runs:
    (exporter if name.startswith("exporter") else once)(name)
for r in range(rounds):
    names = list(runs) if r % 2 == 0 else list(reversed(runs))
    for name in names:
        t = time.perf_counter()
        (exporter if name.startswith("exporter") else once)(name)
        runs[name].append(time.perf_counter() - t)
print(json.dumps(runs))
"""


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout_s: float = 300.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read()


def _wait_listening(url: str, timeout_s: float = 60.0) -> None:
    """Until the server accepts connections (its first scrape may take long)."""
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not listen in {timeout_s:g} s") from None
            time.sleep(0.1)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Servers:
    """Exporters started on 127.0.0.1, all ended and reaped at close()."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.tmpdir = tempfile.mkdtemp(prefix="rd-exporter-bench-")

    def start(self, argv: list[str], url: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        self.procs.append(proc)
        _wait_listening(url)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def time_scrapes(urls: dict[str, str], rounds: int, log: Callable[[str], None]
                 ) -> dict[str, dict[str, Any]]:
    names = list(urls)
    runs: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        _get(urls[name])                      # warm: first census, imports, caches
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            _get(urls[name])
            runs[name].append(time.perf_counter() - start)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {runs[n][-1]:.3f}s" for n in names))
    return {n: {"median_s": round(statistics.median(v), 4), "min_s": round(min(v), 4),
                "max_s": round(max(v), 4)} for n, v in runs.items()}


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    zombies, sleeping = SIZES[args.size]
    doc: dict[str, Any] = {"schema": "reaper-doctor/exporter-bench/1", "size": args.size,
                           "notes": []}
    if not become_subreaper():
        doc["notes"].append("not a subreaper: orphaned zombies go to PID 1")
    rd_argv, rd_env = reaper_doctor_argv(args.reaper_doctor)
    targets, servers = Targets(), Servers()
    try:
        log(f"crowd: {sleeping} sleeping children, {zombies} zombies")
        crowd = targets.start("crowd", zombies, sleeping, 0)
        doc["crowd"] = {"pid": crowd.pid, "zombies": crowd.info["zombies"], "live": sleeping}
        doc["processes_on_machine"] = sum(1 for e in os.listdir("/proc") if e.isdigit())
        with open("/proc/loadavg") as f:
            doc["loadavg_before"] = f.read().split()[:3]
        urls: dict[str, str] = {}
        port = _free_port()
        urls["reaper-doctor"] = f"http://127.0.0.1:{port}/metrics"
        exporter = servers.start([*rd_argv, "exporter", "--listen", f"127.0.0.1:{port}",
                                  "--min-interval", "0", "--grace", "1"],
                                 urls["reaper-doctor"], rd_env)
        node = _which(NODE_EXPORTER)
        if node:
            port = _free_port()
            urls["node_exporter"] = f"http://127.0.0.1:{port}/metrics"
            servers.start([node, "--collector.disable-defaults", "--collector.processes",
                           f"--web.listen-address=127.0.0.1:{port}"], urls["node_exporter"])
        else:
            doc["notes"].append("node_exporter not installed (prometheus-node-exporter)")
        pexp = _which(PROCESS_EXPORTER)
        if pexp:
            config = os.path.join(servers.tmpdir, "process-exporter.yml")
            with open(config, "w") as f:
                f.write(PROCESS_EXPORTER_CONFIG)
            port = _free_port()
            urls["process-exporter"] = f"http://127.0.0.1:{port}/metrics"
            servers.start([pexp, "-config.path", config,
                           "-web.listen-address", f"127.0.0.1:{port}"], urls["process-exporter"])
        else:
            doc["notes"].append("process-exporter not installed (prometheus-process-exporter)")
        log("warm scrapes of /metrics:")
        doc["scrape"] = time_scrapes(urls, args.rounds, log)
        ours = doc["scrape"]["reaper-doctor"]["median_s"]
        doc["ratios"] = {f"reaper-doctor/{n}": round(ours / r["median_s"], 3)
                         for n, r in doc["scrape"].items() if n != "reaper-doctor"}

        if args.rss_scrapes:
            log(f"RSS over {args.rss_scrapes} scrapes:")
            # Warm up (imports, caches) with as many scrapes as are measured,
            # at most 20: each one close to the last waits out the grace.
            for _ in range(min(20, args.rss_scrapes)):
                _get(urls["reaper-doctor"])
            before = _rss_kb(exporter.pid)
            started = time.monotonic()
            for i in range(args.rss_scrapes):
                _get(urls["reaper-doctor"])
                if (i + 1) % 100 == 0:
                    log(f"  {i + 1} scrapes: RSS {_rss_kb(exporter.pid) / 1024:.1f} MB")
            after = _rss_kb(exporter.pid)
            doc["rss"] = {"scrapes": args.rss_scrapes, "before_mb": round(before / 1024, 2),
                          "after_mb": round(after / 1024, 2),
                          "growth_mb": round((after - before) / 1024, 2),
                          "seconds": round(time.monotonic() - started, 1)}
        servers.close()

        log("census with and without the CLOSE_WAIT / accept-queue pass:")
        done = subprocess.run([sys.executable,
                               "-c", COVERAGE, str(args.rounds)], env=rd_env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            runs = json.loads(done.stdout)
            med = {k: statistics.median(v) for k, v in runs.items()}
            doc["coverage"] = {
                way: {"with_s": round(med[f"{way}_with"], 4),
                      "without_s": round(med[f"{way}_without"], 4),
                      "overhead": round(med[f"{way}_with"] / med[f"{way}_without"] - 1, 3)}
                for way in ("once", "exporter")}
        else:
            doc["notes"].append("coverage run failed: " + done.stderr.strip()[-300:])
        with open("/proc/loadavg") as f:
            doc["loadavg_after"] = f.read().split()[:3]
    finally:
        servers.close()
        targets.close()
    doc["goals"] = GOALS
    return doc


def render_text(doc: dict[str, Any]) -> str:
    lines = [f"processes on the machine: {doc.get('processes_on_machine')} "
             f"(crowd: {doc['crowd']['live']} sleeping, {doc['crowd']['zombies']} zombies); "
             f"load average {' '.join(doc['loadavg_before'])} -> "
             f"{' '.join(doc.get('loadavg_after', ['?']))}", "",
             "warm scrape of /metrics (median / min / max):"]
    for name, r in doc["scrape"].items():
        lines.append(f"  {name:18} {r['median_s']:.3f} s  {r['min_s']:.3f}  {r['max_s']:.3f}")
    for name, ratio in doc["ratios"].items():
        goal = GOALS.get(name)
        lines.append(f"  {name}: {ratio:.3f}x (goal <= {goal}x)")
    if "rss" in doc:
        r = doc["rss"]
        lines.append(f"RSS: {r['before_mb']} MB -> {r['after_mb']} MB over {r['scrapes']} "
                     f"scrapes ({r['growth_mb']:+} MB; goal < 5 MB)")
    for way, c in doc.get("coverage", {}).items():
        what = "one-shot census" if way == "once" else "exporter's census"
        lines.append(f"{what}: {c['without_s']:.3f} s without the socket pass, "
                     f"{c['with_s']:.3f} s with it ({c['overhead']:+.1%}; goal <= +20%)")
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--rss-scrapes", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--reaper-doctor", help="command to run (default: the installed "
                        "script beside this Python, else python -m reaper_doctor)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.rss_scrapes < 0:
        parser.error("--rounds must be at least 1 and --rss-scrapes at least 0")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        doc = run(args, log)
    except Interrupted as e:
        print(f"exporter_bench: interrupted ({e}); everything was reaped", file=sys.stderr)
        return 130
    print(json.dumps(doc, indent=2) if args.json else render_text(doc), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
