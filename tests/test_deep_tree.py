"""A chain of forks thousands of processes deep renders, as text and JSON,
without running into Python's recursion limit (1,000 calls)."""

from __future__ import annotations

import json
import sys

from reaper_doctor.model import ProcessInfo, Report, Snapshot, TargetReport
from reaper_doctor.render.json import _recursion_room, render_json
from reaper_doctor.render.text import render_text

DEPTH = 3000   # each process the only child of the one before: 3,000 levels


def _chain_report() -> Report:
    processes = {}
    for level in range(DEPTH + 1):
        pid = 1000 + level
        processes[pid] = ProcessInfo(pid, pid - 1, f"p{level}", "S", pid, 1.0, 1, 0, (), 3)
    snap = Snapshot(target=1000, taken_at=0.0, processes=processes)
    return Report(targets=(TargetReport(pid=1000, snapshot=snap, findings=()),))


def test_a_chain_3000_deep_renders_as_json_and_text():
    report = _chain_report()
    limit = sys.getrecursionlimit()
    text = render_json(report)
    assert sys.getrecursionlimit() == limit   # given back
    with _recursion_room(4 * DEPTH + 200):    # json.loads recurses per level too
        node, depth = json.loads(text)["targets"][0]["tree"], 0
    while node["children"]:
        (node,) = node["children"]
        depth += 1
    assert depth == DEPTH and node["pid"] == 1000 + DEPTH
    lines = render_text(report).splitlines()
    deepest = [line for line in lines if f"{1000 + DEPTH} p{DEPTH}" in line]
    assert len(deepest) == 1 and deepest[0].startswith("   " * (DEPTH - 1) + "└─ ")


def test_the_recursion_room_is_given_back_after_an_error():
    limit = sys.getrecursionlimit()
    try:
        with _recursion_room(limit + 5000):
            assert sys.getrecursionlimit() == limit + 5000
            raise KeyError
    except KeyError:
        pass
    assert sys.getrecursionlimit() == limit
