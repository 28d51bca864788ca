"""`reaper-doctor exporter`: a real server process scraped over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import CLOSE_WAIT_HOLDER, cli_argv, one_error_line, run_cli, wait_until
from reaper_doctor.commands.exporter import SharedResult, parse_listen


class Exporter:
    """`reaper-doctor exporter` on a free port of 127.0.0.1, always ended."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*cli_argv(), "exporter", "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stderr.readline() if self.proc.stderr else ""
        assert "serving http://127.0.0.1:" in line, line
        self.url = line.split("serving ")[1].split()[0].removesuffix("/metrics")

    def get(self, path: str = "/metrics", timeout_s: float = 30.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict:
        _status, text = self.get()
        return {f.name: f for f in text_string_to_metric_families(text)}

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def exporter():
    started: list[Exporter] = []

    def start(*args: str) -> Exporter:
        ex = Exporter(*args)
        started.append(ex)
        return ex

    yield start
    for ex in started:
        ex.stop()


def one(fams: dict, name: str, **labels: str) -> float:
    found = [s.value for f in fams.values() for s in f.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_metrics_root_pointer_and_404(exporter, spawner):
    parent = spawner.zombie_parent("0", "0", "0")
    ex = exporter("--min-interval", "0")
    status, text = ex.get("/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert one(fams, "reaper_doctor_zombie_children", pid=str(parent.pid)) == 3
    assert one(fams, "reaper_doctor_machine_tasks") > 0
    assert one(fams, "reaper_doctor_census_duration_seconds") > 0
    assert one(fams, "reaper_doctor_scrapes_total") == 1
    assert one(fams, "reaper_doctor_census_errors_total") == 0
    status, text = ex.get("/")
    assert status == 200 and text == "reaper-doctor exporter: metrics at /metrics\n"
    assert ex.get("/nope")[0] == 404


def test_sigterm_ends_it_cleanly(exporter):
    ex = exporter()
    assert ex.get("/")[0] == 200
    code, err = ex.stop()
    assert code == 0 and "Traceback" not in err and "exporter stopped" in err


def test_ctrl_c_ends_it_cleanly(exporter):
    ex = exporter()
    ex.proc.send_signal(signal.SIGINT)
    code, err = ex.stop()
    assert code == 0 and "Traceback" not in err


def test_census_is_reused_within_min_interval(exporter):
    ex = exporter("--min-interval", "600")
    first, second = ex.metrics(), ex.metrics()
    assert one(first, "reaper_doctor_censuses_total") == 1
    assert one(second, "reaper_doctor_censuses_total") == 1
    assert one(second, "reaper_doctor_scrapes_total") == 2
    ex0 = exporter("--min-interval", "0")
    ex0.metrics()
    assert one(ex0.metrics(), "reaper_doctor_censuses_total") == 2


def test_concurrent_scrapes_share_one_census(exporter):
    ex = exporter("--min-interval", "0")
    ex.metrics()                            # warm: imports done, first census taken
    results: list[dict] = []
    # Released together: on a busy machine, threads started one by one can
    # reach the exporter a census apart, each then rightly starting one.
    at_once = threading.Barrier(6)

    def scrape() -> None:
        at_once.wait(60)
        results.append(ex.metrics())

    threads = [threading.Thread(target=scrape) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = sorted(one(r, "reaper_doctor_censuses_total") for r in results)
    assert len(counts) == 6
    # 6 scrapes at once: far fewer censuses than scrapes (each waits for at most one).
    assert counts[-1] - 1 <= 3, counts


def test_default_listen_is_loopback_and_bad_listen_is_one_line():
    help_text = run_cli("exporter", "--help").stdout
    assert "127.0.0.1:9563" in help_text
    for bad in ("9563", "host:port", "127.0.0.1:99999", ":9563"):
        one_error_line(run_cli("exporter", "--listen", bad))


def test_busy_port_is_one_line():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        line = one_error_line(run_cli("exporter", "--listen", f"127.0.0.1:{port}"))
    assert "cannot listen on" in line


def test_parse_listen():
    assert parse_listen("127.0.0.1:9563") == ("127.0.0.1", 9563)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        parse_listen("9563")


def test_shared_result_runs_once_for_callers_that_arrive_during_a_run():
    gate = threading.Event()
    runs = []

    def produce() -> int:
        runs.append(1)
        gate.wait(10)
        return len(runs)

    # A long max age: a caller that comes only after the run takes its
    # result; those that come during it must wait for it, not start another.
    shared = SharedResult(produce, max_age_s=600)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(shared.get())) for _ in range(5)]
    threads[0].start()
    wait_until(lambda: runs, what="the first run")
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)                 # most of them now wait behind the run
    gate.set()
    for t in threads:
        t.join(10)
    assert len(runs) == 1 and got == [(1, None)] * 5


def test_shared_result_counts_errors_and_recovers():
    calls = iter([RuntimeError("boom"), 7])

    def produce() -> int:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    shared = SharedResult(produce, max_age_s=60)
    value, error = shared.get()
    assert value is None and isinstance(error, RuntimeError) and shared.errors == 1
    assert shared.get() == (7, None) and shared.runs == 2


# Lowers its soft RLIMIT_NOFILE to 1000 (so the census ranks it among the
# nearest their limit), then opens 4 descriptors every 50 ms.
FD_GROWER = r"""
import os, resource, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
soft = 1000 if hard == resource.RLIM_INFINITY else min(1000, hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
held = []
print("ready", flush=True)
while len(held) < soft - 40:
    held += [os.open("/dev/null", os.O_RDONLY) for _ in range(4)]
    time.sleep(0.05)
time.sleep(300)
"""


def test_history_gives_rd203_across_censuses_and_forgets_gone_pids(spawner):
    from reaper_doctor.commands.census import census_after

    grower = spawner.python(FD_GROWER)
    state, codes = None, []
    for _ in range(4):
        report, state = census_after(state, grace_s=0)
        codes = [f.code for t in report.targets for f in t.findings if f.pid == grower.pid]
        time.sleep(0.3)
    assert "RD203" in codes, codes
    assert all(grower.pid in s.counts for s in state.fd_series[-4:])
    spawner.reap_all()
    _report, state = census_after(state, grace_s=0)
    assert not any(grower.pid in s.counts for s in state.fd_series)


def test_process_cache_keys_by_inode_refreshes_and_forgets():
    from reaper_doctor.collect.machine import ProcessCache
    from reaper_doctor.collect.tasks import TaskBrief

    cache = ProcessCache()
    table = {10: TaskBrief(ppid=1, uid=0, threads=1, state="S", ino=111)}
    cache.next_census(table)
    cache.put("limits", 10, 111, "read at census 1")
    assert cache.get("limits", 10, 111) == "read at census 1"
    assert cache.get("limits", 10, 999) is None            # same PID, another process
    for _ in range(ProcessCache.REFRESH + 10 % ProcessCache.REFRESH - 1):
        cache.next_census(table)
    assert cache.get("limits", 10, 111) == "read at census 1"
    cache.next_census(table)
    assert cache.get("limits", 10, 111) is None            # due to be read again
    assert cache.get("limits", 10, 111, refresh=False) == "read at census 1"
    cache.next_census({})
    assert cache.get("limits", 10, 111, refresh=False) is None   # the PID is gone


def test_exporter_censuses_see_a_changed_limit_within_the_refresh(spawner):
    from reaper_doctor.collect.machine import ProcessCache
    from reaper_doctor.commands.census import census_after

    proc = spawner.python("import time; print('ready', flush=True); time.sleep(300)")
    cache, state = ProcessCache(), None

    def soft_seen() -> int | None:
        nonlocal state
        report, state = census_after(state, grace_s=0, cache=cache, sockets=False)
        return state.cache.get("limits", proc.pid, _ino(proc.pid),
                               refresh=False)["Max open files"][0]

    first = soft_seen()
    import resource

    hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (first - 1, hard))
    seen = [soft_seen() for _ in range(2 * ProcessCache.REFRESH)]
    assert seen[0] == first and first - 1 in seen


def _ino(pid: int) -> int:
    import os

    return os.stat(f"/proc/{pid}").st_ino


def test_cached_zombies_follow_their_new_parent(spawner):
    import os

    from reaper_doctor.collect.machine import ProcessCache
    from reaper_doctor.commands.census import census_after

    parent = spawner.zombie_parent("0", "0")
    cache = ProcessCache()
    report, state = census_after(None, grace_s=0, cache=cache, sockets=False)
    assert parent.pid in [zp.pid for zp in report.machine.zombie_parents]
    os.killpg(parent.pid, signal.SIGKILL)
    parent.wait()
    report, state = census_after(state, grace_s=0, cache=cache, sockets=False)
    assert parent.pid not in [zp.pid for zp in report.machine.zombie_parents]


def test_every_scrape_carries_a_lasting_leak(exporter, spawner):
    """Scrape after scrape, each a fresh census judged against the earlier
    ones, a CLOSE_WAIT leak and a zombie leak that last keep their series:
    one scrape without them would make Prometheus mark them stale."""
    sockets = spawner.python(CLOSE_WAIT_HOLDER, "3")
    zombies = spawner.zombie_parent("0", "0", "0")
    ex = exporter("--min-interval", "0", "--grace", "1")

    def values() -> tuple[list[float], list[float]]:
        fams = ex.metrics()
        return tuple(  # type: ignore[return-value]
            [s.value for s in fams[name].samples if s.labels["pid"] == str(proc.pid)]
            for name, proc in (("reaper_doctor_close_wait_sockets", sockets),
                               ("reaper_doctor_zombie_children", zombies)))

    wait_until(lambda: values() == ([3.0], [3.0]), timeout_s=60, interval_s=0.2,
               what="both series")
    seen = [values() for _ in range(10)]
    assert all(v == ([3.0], [3.0]) for v in seen), seen


@pytest.mark.skipif(os.geteuid() != 0, reason="changing another process's real UID needs root")
def test_warm_process_table_reads_stat_and_sees_a_changed_uid_within_the_refresh(spawner):
    from reaper_doctor.collect.machine import ProcessCache
    from reaper_doctor.collect.tasks import process_table

    proc = spawner.python(
        "import os, signal, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: os.setresuid(65534, 65534, 65534))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n")
    parent = spawner.zombie_parent("0")
    (zombie,) = [pid for pid, b in process_table().items()
                 if b.ppid == parent.pid and b.state == "Z"]
    cache = ProcessCache()
    cache.next_census(process_table(details=True, cache=cache))
    warm, cold = process_table(details=True, cache=cache), process_table(details=True)
    cache.next_census(warm)
    for pid in (proc.pid, parent.pid, zombie):
        assert warm[pid].fd_size is None   # from /proc/PID/stat: the cache was used
        assert warm[pid]._replace(fd_size=None) == cold[pid]._replace(fd_size=None), pid
    assert warm[zombie].state == "Z" and warm[zombie].ppid == parent.pid

    os.kill(proc.pid, signal.SIGUSR1)
    wait_until(lambda: process_table()[proc.pid].uid == 65534, what="setresuid")
    seen = []
    for _ in range(2 * ProcessCache.REFRESH):
        table = process_table(details=True, cache=cache)
        cache.next_census(table)
        seen.append(table[proc.pid].uid)
    assert seen[0] == 0 and seen[-1] == 65534, seen


def test_nproc_lowest_soft_limit_beside_an_unlimited_hard_one():
    from reaper_doctor.collect.tasks import TaskBrief
    from reaper_doctor.diagnose.census import uid_tasks

    table = {1: TaskBrief(0, 1000, 1, "S"), 2: TaskBrief(0, 1000, 1, "S")}
    limits = {1: {"Max processes": (8, None)}, 2: {"Max processes": (8, 600)}}
    (row,) = uid_tasks(table, limits)
    assert (row.soft_min, row.soft_min_pid) == (8, 2)
