"""The census sees descriptor leaks: CLOSE_WAIT sockets on listening ports
and stuck accept queues of every process, from one socket table per
network namespace, judged by the same rules as `scan PID`."""

from __future__ import annotations

import psutil
from prometheus_client.parser import text_string_to_metric_families

from helpers import CLOSE_WAIT_HOLDER, run_cli, run_json, wait_until

# Listens with a backlog of 8, never accepts; its clients (in the same
# process) connect and wait: N connections (argv[1]) in the accept queue.
NOT_ACCEPTING = r"""
import socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
clients = [socket.create_connection(srv.getsockname()) for _ in range(int(sys.argv[1]))]
print("ready", flush=True)
time.sleep(300)
"""

# Accepts and closes each connection: the healthy server.
CLOSES_EACH = r"""
import socket, threading, time
srv = socket.create_server(("127.0.0.1", 0))
def serve():
    while True:
        a, _ = srv.accept()
        a.close()
threading.Thread(target=serve, daemon=True).start()
for _ in range(5):
    c = socket.create_connection(srv.getsockname())
    c.recv(1)
    c.close()
print("ready", flush=True)
time.sleep(300)
"""


def _close_wait_of(pid: int) -> int:
    # psutil, not ss: iproute2 is not on every machine the suite runs on.
    return sum(1 for c in psutil.net_connections(kind="tcp")
               if c.pid == pid and c.status == psutil.CONN_CLOSE_WAIT)


def test_census_raises_rd201_for_a_close_wait_leak_anywhere(spawner):
    leaky = spawner.python(CLOSE_WAIT_HOLDER, "3")
    healthy = spawner.python(CLOSES_EACH)
    code, doc = run_json("scan", "--grace", "0.3")
    assert code == 1
    (target,) = [t for t in doc["targets"] if t["pid"] == leaky.pid]
    (rd201,) = [f for f in target["findings"] if f["code"] == "RD201"]
    assert rd201["evidence"]["close_wait"] == 3
    assert not [t for t in doc["targets"] if t["pid"] == healthy.pid]
    (row,) = [r for r in doc["machine"]["descriptor_leaks"] if r["pid"] == leaky.pid]
    assert row["close_wait"] == 3 and row["verdicts"] == ["RD201"]
    assert doc["machine"]["netns_read"] >= 1


def test_census_raises_rd401_for_a_stuck_accept_queue(spawner):
    stuck = spawner.python(NOT_ACCEPTING, "2")
    code, doc = run_json("scan", "--grace", "0.3")
    assert code == 1
    (target,) = [t for t in doc["targets"] if t["pid"] == stuck.pid]
    (rd401,) = [f for f in target["findings"] if f["code"] == "RD401"]
    assert rd401["evidence"]["queue"] == 2 and rd401["evidence"]["backlog"] == 8
    (row,) = [r for r in doc["machine"]["descriptor_leaks"] if r["pid"] == stuck.pid]
    assert row["listeners"][0]["queue"] == 2 and row["verdicts"] == ["RD401"]


def test_census_text_has_a_descriptor_leaks_section(spawner):
    leaky = spawner.python(CLOSE_WAIT_HOLDER, "3")
    result = run_cli("scan", "--grace", "0", "--no-color")
    assert result.returncode == 1, result.stderr
    section = result.stdout.split("Descriptor leaks", 1)[1]
    assert f"{leaky.pid}" in section.split("\n\n")[0]


def test_census_prometheus_carries_close_wait_and_accept_queues(spawner):
    leaky = spawner.python(CLOSE_WAIT_HOLDER, "3")
    stuck = spawner.python(NOT_ACCEPTING, "2")
    wait_until(lambda: _close_wait_of(leaky.pid) == 3, what="3 CLOSE_WAIT sockets")
    result = run_cli("scan", "--grace", "0", "--format", "prometheus")
    fams = {f.name: f for f in text_string_to_metric_families(result.stdout)}

    def one(name: str, **labels: str) -> float:
        found = [s.value for f in fams.values() for s in f.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert one("reaper_doctor_close_wait_sockets", pid=str(leaky.pid)) == 3
    assert one("reaper_doctor_process_findings", pid=str(leaky.pid), code="RD201") == 1
    assert one("reaper_doctor_findings", code="RD201", severity="error") >= 1
    assert one("reaper_doctor_accept_queue_connections", pid=str(stuck.pid)) == 2
    assert one("reaper_doctor_accept_queue_backlog", pid=str(stuck.pid)) == 8
    assert one("reaper_doctor_process_findings", pid=str(stuck.pid), code="RD401") == 1
