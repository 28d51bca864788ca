"""The exporter under a real Prometheus (Debian `prometheus`, 2.42): it
scrapes every few seconds, evaluates a copy of deploy/'s rules with short
`for:`, and the zombie-leak and CLOSE_WAIT-leak alerts fire for processes
this test starts; once they are stopped, their series go."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import CLOSE_WAIT_HOLDER, cli_argv, wait_until

PROMETHEUS = shutil.which("prometheus")
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "reaper-doctor.rules.yml"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or shutil.which("promtool") is None,
    reason="prometheus and promtool are not installed (Debian: apt-get install prometheus)")

# Prometheus' scrape interval and timeout.
SCRAPE_S = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except OSError:
        return {}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture
def prometheus_with_exporter(tmp_path):
    """(prometheus port, exporter process): both on 127.0.0.1, both ended."""
    started: list[subprocess.Popen] = []
    try:
        exporter = subprocess.Popen(
            [*cli_argv(), "exporter", "--listen", "127.0.0.1:0", "--min-interval", "0.5",
             "--grace", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        started.append(exporter)
        line = exporter.stderr.readline() if exporter.stderr else ""
        assert "serving http://" in line, line
        target = line.split("http://")[1].split("/")[0]
        rules = tmp_path / "rules.yml"
        rules.write_text(RULES.read_text().replace("for: 5m", "for: 2s").replace(
            "for: 10m", "for: 2s"))
        config = tmp_path / "prometheus.yml"
        # Each scrape waits for a fresh census (--min-interval 0.5), which
        # takes over a second on a loaded machine of thousands of processes
        # (1.5 s median, 3.4 s at worst, measured here with 8,000): a 1 s
        # scrape_timeout then failed about 4 scrapes in 10, and each failed
        # scrape marks every series of the target stale until the next one.
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules}\n"
            "scrape_configs:\n  - job_name: reaper-doctor\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        port = _free_port()
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
            start_new_session=True)
        started.append(prom)
        wait_until(lambda: _api(port, "status/buildinfo").get("status") == "success",
                   timeout_s=60, interval_s=0.2, what="prometheus to serve its API")
        yield port, exporter
    finally:
        for proc in reversed(started):
            _stop(proc)


def _firing(port: int) -> set[tuple[str, str]]:
    alerts = _api(port, "alerts").get("data", {}).get("alerts", [])
    return {(a["labels"]["alertname"], a["labels"].get("pid", "")) for a in alerts
            if a.get("state") == "firing"}


def _series(port: int, query: str) -> list:
    return _api(port, "query", query=query).get("data", {}).get("result", [])


def test_alerts_fire_for_real_leaks_and_the_series_go_with_them(prometheus_with_exporter,
                                                                spawner):
    port, _exporter = prometheus_with_exporter
    zombies = spawner.zombie_parent("0", "0", "0")
    sockets = spawner.python(CLOSE_WAIT_HOLDER, "3")
    want = {("ZombieLeak", str(zombies.pid)), ("CloseWaitLeak", str(sockets.pid))}
    try:
        wait_until(lambda: want <= _firing(port), timeout_s=120, interval_s=0.5,
                   what=f"alerts {sorted(want)} to fire")
    except AssertionError as e:
        raise AssertionError(f"{e}; firing: {sorted(_firing(port))}") from None
    # The newest sample of each series (a scrape that outran its timeout
    # would leave the series stale until the next one).
    for query in (f'reaper_doctor_close_wait_sockets{{pid="{sockets.pid}"}}',
                  f'reaper_doctor_zombie_children{{pid="{zombies.pid}"}}'):
        wait_until(lambda q=query: [r["value"][1] for r in _series(port, q)] == ["3"],
                   timeout_s=30, interval_s=0.5, what=f"{query} to read 3")

    for proc in (zombies, sockets):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    query = (f'reaper_doctor_zombie_children{{pid="{zombies.pid}"}} or '
             f'reaper_doctor_close_wait_sockets{{pid="{sockets.pid}"}} or '
             f'reaper_doctor_process_findings{{pid=~"{zombies.pid}|{sockets.pid}"}}')
    wait_until(lambda: not _series(port, query), timeout_s=60, interval_s=0.5,
               what="their series to go stale")
    wait_until(lambda: not (want & _firing(port)), timeout_s=60, interval_s=0.5,
               what="the alerts to resolve")
