"""`reaper-doctor lesson coalescing`: real trials, the renderer, the CLI errors."""

from __future__ import annotations

import json
import os
import re

import pytest
from docs_reference import assert_documented
from helpers import children_states as children_of
from helpers import proc_stats, run_cli, wait_until

from reaper_doctor import cli
from reaper_doctor.commands import lesson
from reaper_doctor.model.lesson import STRATEGIES, LessonReport, StrategyResult, Trial
from reaper_doctor.render import lesson as lesson_render

N = 64


def processes_of(pids: set[int]) -> list[int]:
    """Processes whose parent or session is one of `pids` (the trials')."""
    return [pid for pid, rest in proc_stats().items()
            if int(rest[1]) in pids or int(rest[3]) in pids]


def pidfd_expected() -> bool:
    major, minor = (int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    return hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD") and (major, minor) >= (5, 4)


@pytest.fixture(scope="module")
def lesson_doc() -> dict:
    result = run_cli("lesson", "coalescing", "--children", str(N), "--json", timeout_s=180)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_json_shape(lesson_doc: dict) -> None:
    assert lesson_doc["schema"] == "reaper-doctor/lesson-coalescing/1"
    assert lesson_doc["children"] == N
    assert [s["name"] for s in lesson_doc["strategies"]] == list(STRATEGIES)
    assert_documented(lesson_doc)   # every key as docs/json.md says
    for s in lesson_doc["strategies"]:
        assert s["children"] == N


def test_wait_once_leaves_zombies(lesson_doc: dict) -> None:
    s = lesson_doc["strategies"][0]
    assert s["name"] == "wait-once" and s["skipped"] is None
    assert s["zombies_left"] > 0 and s["handler_runs"] < N
    for t in s["trials"]:
        assert t["still_alive"] == 0
        assert t["zombies_left"] > 0, t
        assert t["handler_runs"] < N, t
        # One wait() per run: reaped == runs, and the rest were zombies.
        assert t["reaped"] == t["handler_runs"]
        assert t["reaped"] + t["zombies_left"] == N
        assert t["cleanup_reaped"] == t["zombies_left"]


@pytest.mark.parametrize("name", ["waitpid-loop", "sig-ign", "pidfd"])
def test_fixed_strategies_leave_none(lesson_doc: dict, name: str) -> None:
    s = next(s for s in lesson_doc["strategies"] if s["name"] == name)
    if s["skipped"] is not None:
        assert name == "pidfd" and not pidfd_expected(), s["skipped"]
        assert "pidfd" in s["skipped"].lower() or "P_PIDFD" in s["skipped"]
        return
    assert s["zombies_left"] == 0
    for t in s["trials"]:
        assert t["zombies_left"] == 0 and t["still_alive"] == 0, t
    if name == "sig-ign":
        assert s["handler_runs"] is None and s["reaped"] is None and s["note"]
        assert all(t["waitpid_after"] == "ECHILD" for t in s["trials"])
    else:
        assert all(t["reaped"] == N for t in s["trials"])
    if name == "pidfd":
        assert all(t["handler_runs"] == N for t in s["trials"])  # one event per child


def test_pidfd_not_skipped_where_supported(lesson_doc: dict) -> None:
    if not pidfd_expected():
        pytest.skip("no pidfd here")
    assert lesson_doc["strategies"][3]["skipped"] is None


def test_nothing_left_after_the_run(lesson_doc: dict) -> None:
    pids = {t["pid"] for s in lesson_doc["strategies"] for t in s["trials"]}
    assert len(pids) == sum(len(s["trials"]) for s in lesson_doc["strategies"]) >= 4
    assert lesson_doc["leftover_processes"] == 0
    for s in lesson_doc["strategies"]:
        for t in s["trials"]:
            assert t["children_after_cleanup"] == 0 and t["leftover_processes"] == 0
    # Neither a trial (its session id is its own PID) nor anything it forked.
    assert processes_of(pids) == []


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "100000"])
def test_bad_children_is_one_line_exit_2(bad: str) -> None:
    result = run_cli("lesson", "coalescing", "--children", bad, timeout_s=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reaper-doctor: error:"), result.stderr
    assert "--children" in lines[0] and "Traceback" not in result.stderr


def test_strategy_option_and_text_output() -> None:
    result = run_cli("lesson", "coalescing", "--children", "8", "--trials", "1",
                     "--strategy", "sig-ign", "--no-color", timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert "sig-ign" in result.stdout and "wait-once  " not in result.stdout
    assert "\x1b[" not in result.stdout
    assert "explain RD102" in result.stdout


def test_cli_names_match_lesson() -> None:
    assert cli.LESSON_STRATEGIES == STRATEGIES


def test_run_trial_handshake_hooks() -> None:
    seen: dict[str, object] = {}

    def before(pid: int) -> None:
        # Children forked, blocked on the pipe, none exited yet.
        seen["before"] = pid
        seen["states"] = wait_until(lambda: (s := children_of(pid)) and len(s) == 8 and s,
                                    timeout_s=10, what="8 children of the trial")

    trial = lesson.run_trial("wait-once", 8, before_release=before,
                             after_release=lambda pid: seen.setdefault("after", pid),
                             timeout_s=60)
    assert seen["before"] == seen["after"] == trial.pid
    assert "Z" not in set(seen["states"].values())
    assert trial.zombies_left is not None and trial.reaped is not None
    assert trial.reaped + trial.zombies_left == 8
    assert processes_of({trial.pid}) == []


def test_run_trial_hook_failure_cleans_up() -> None:
    seen: list[int] = []

    def broken(pid: int) -> None:
        seen.append(pid)
        raise RuntimeError("tracer failed")

    with pytest.raises(RuntimeError, match="tracer failed"):
        lesson.run_trial("waitpid-loop", 8, before_release=broken, timeout_s=60)
    assert seen
    assert processes_of(set(seen)) == []  # the trial released and reaped its children


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(lesson.LessonError):
        lesson.run_trial("wait-twice", 8)


# --- renderer, on hand-built data ----------------------------------------


def _trial(strategy: str, pid: int, runs: int | None, reaped: int | None,
           left: int) -> Trial:
    return Trial(strategy=strategy, children=64, pid=pid, handler_runs=runs, reaped=reaped,
                 zombies_left=left, still_alive=0, cleanup_reaped=left, settle_s=0.13)


def _report() -> LessonReport:
    return LessonReport(children=64, trials=3, strategies=(
        StrategyResult("wait-once", 64, (_trial("wait-once", 101, 17, 17, 47),
                                         _trial("wait-once", 102, 8, 8, 56),
                                         _trial("wait-once", 103, 11, 11, 53))),
        StrategyResult("waitpid-loop", 64, (_trial("waitpid-loop", 201, 3, 64, 0),
                                            _trial("waitpid-loop", 202, 19, 64, 0),
                                            _trial("waitpid-loop", 203, 32, 64, 0))),
        StrategyResult("sig-ign", 64, (_trial("sig-ign", 301, None, None, 0),)),
        StrategyResult("pidfd", 64, (), skipped="os.pidfd_open is not available"),
    ))


def test_render_text_on_hand_built_data() -> None:
    text = lesson_render.render_text(_report(), color=False, width=120)
    assert "\x1b[" not in text
    for header in ("strategy", "children", "handler runs", "reaped by handler",
                   "zombies left"):
        assert header in text
    row = next(line for line in text.splitlines() if line.startswith("wait-once"))
    # The median trial (by zombies left) is PID 103: 11 runs, 53 left.
    assert row.split()[:3] == ["wait-once", "64", "11"]
    assert "(8-17)" in row and "53 (47-56)" in row
    assert "skipped: os.pidfd_open is not available" in text
    flat = " ".join(text.split())
    assert "ran only 11 times and reaped 11; 53 children stayed zombies" in flat
    assert "waitpid(-1, os.WNOHANG)" in flat and "pending" in flat
    assert "waitpid-loop ran 19 times and reaped 64, 0 left" in flat
    assert text.rstrip().endswith("reaper-doctor explain RD102")
    assert "\x1b[" in lesson_render.render_text(_report(), color=True)
    narrow = lesson_render.render_text(_report(), color=False, width=60)
    assert max(map(len, narrow.splitlines())) <= 60 and "53 (47-56)" in narrow


def test_render_json_on_hand_built_data() -> None:
    doc = json.loads(lesson_render.render_json(_report()))
    assert doc["schema"] == "reaper-doctor/lesson-coalescing/1"
    assert doc["children"] == 64 and doc["trials"] == 3
    once, loop, ign, pidfd = doc["strategies"]
    assert (once["handler_runs"], once["reaped"], once["zombies_left"]) == (11, 11, 53)
    assert once["median_trial_pid"] == 103
    assert once["min"]["zombies_left"] == 47 and once["max"]["zombies_left"] == 56
    assert [t["pid"] for t in once["trials"]] == [101, 102, 103]
    assert loop["handler_runs"] == 19 and loop["zombies_left"] == 0
    assert ign["handler_runs"] is None and ign["reaped"] is None and "kernel" in ign["note"]
    assert pidfd["skipped"] == "os.pidfd_open is not available"
    assert pidfd["zombies_left"] is None and pidfd["trials"] == []
