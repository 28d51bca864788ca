"""benchmarks/scan_bench.py at a reduced size: it runs, reports, and reaps.

No timing assertions: the machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "scan_bench.py")


def test_benchmark_smoke_run_reports_and_reaps_everything():
    result = subprocess.run([sys.executable, BENCH, "--size", "small", "--rounds", "1", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "reaper-doctor/bench/1"
    m, big = doc["targets"]["M"], doc["targets"]["L"]
    assert m["zombies"] > 0 and m["live"] > 0 and m["fds"]["close_wait"] > 0
    assert m["fds"]["tcp_connected"] > 0 and m["fds"]["pipe"] > 0 and m["fds"]["file"] > 0
    assert big["zombies"] > 0
    for key in ("scan", "census"):
        assert doc["results"]["M"][key]["exit_codes"] == [1]   # zombies: RD101
    assert doc["results"]["L"]["scan"]["exit_codes"] == [1]
    assert set(doc["results"]["startup"]) == {"version", "click", "python"}
    for name in ("M scan/lsof", "L scan/pstree", "version/click"):
        if name.split()[-1].split("/")[-1] in ("lsof", "pstree") and name not in doc["ratios"]:
            continue  # the peer tool is not installed here
        assert doc["ratios"][name] > 0
    assert "census_s" in doc["goals"]
    for target in (m, big):
        assert not os.path.exists(f"/proc/{target['pid']}"), "a target was left running"


EXPORTER_BENCH = os.path.join(os.path.dirname(BENCH), "exporter_bench.py")


def test_exporter_benchmark_smoke_run_reports_and_reaps_everything():
    result = subprocess.run([sys.executable, EXPORTER_BENCH, "--size", "small", "--rounds", "1",
                             "--rss-scrapes", "3", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "reaper-doctor/exporter-bench/1"
    assert doc["scrape"]["reaper-doctor"]["median_s"] > 0
    assert doc["rss"]["scrapes"] == 3 and doc["rss"]["after_mb"] > 0
    assert set(doc["coverage"]) == {"once", "exporter"}
    assert doc["crowd"]["zombies"] > 0
