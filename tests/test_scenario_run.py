"""`scenario run` and `scenario compare` through the real command line: each
scenario reproduces its bug (or, healthy, shows none), and nothing it
started is left on the machine afterwards, even when interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from docs_reference import assert_documented
from helpers import (
    Spawner,
    cli_argv,
    proc_stats,
    run_cli,
    run_json,
    stat_fields,
    wait_until,
    zombie_children,
)
from namespaces import namespace_skip_reason, needs_namespaces

from reaper_doctor.commands.scenario import script_path
from reaper_doctor.model.scenario import SCENARIOS

# A fd-leak request never ends (no EOF): a short timeout keeps the run short.
# Other requests take about 50 ms; a generous timeout keeps a busy machine
# from turning them into "hung".
TIMEOUTS = {"fd-leak": "1", "blocking": "2"}
SMALL = ("--requests", "16", "--concurrency", "8", "--grace", "0.5")


def in_session(sid: int) -> list[int]:
    """Every process (zombies too) whose session is `sid`."""
    return [pid for pid, rest in proc_stats().items() if int(rest[3]) == sid]


def assert_nothing_left(doc: dict) -> None:
    """The run says 0 left over, and /proc agrees: the server led its own
    session, and no process of that session, zombie or alive, remains."""
    assert doc["leftover_processes"] == 0, doc["cleanup"]
    sid = doc["server"]["pid"]
    assert sid and in_session(sid) == []
    rest = stat_fields(sid)
    assert rest is None or int(rest[3]) != sid   # the PID is gone (or reused elsewhere)


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def codes(doc: dict) -> set[str]:
    return {f["code"] for f in doc["findings"]}


def run_scenario(name: str, *extra: str) -> tuple[int, dict]:
    code, doc = run_json("scenario", "run", name, *SMALL,
                         "--timeout", TIMEOUTS.get(name, "5"), *extra, timeout_s=120)
    assert_documented(doc)   # every key as docs/json.md says
    assert doc["schema"] == "reaper-doctor/scenario/1" and doc["scenario"] == name
    assert set(doc["requests"]) >= {"sent", "ok", "failed", "hung"}
    assert doc["requests"]["sent"] == 16
    assert set(doc["latency_ms"]) >= {"p50", "p99"}
    assert doc["expected"] == list(SCENARIOS[name].expected)
    assert doc["timeline"] and doc["scan"] is not None
    assert_nothing_left(doc)
    return code, doc


# -- each scenario ----------------------------------------------------------------

def test_zombie_leak_run_finds_rd101() -> None:
    code, doc = run_scenario("zombie-leak")
    assert doc["requests"]["ok"] == 16
    assert codes(doc) == {"RD101"}
    # Nobody reaps: every request's child is still a zombie at the scan.
    assert doc["scan"]["zombies"]["count"] == 16 and doc["peak"]["zombies"] == 16
    assert doc["as_expected"] and code == 0


def test_lost_sigchld_run_finds_rd102() -> None:
    code, doc = run_scenario("lost-sigchld")
    assert doc["requests"]["ok"] == 16
    assert "RD102" in codes(doc) and "RD101" not in codes(doc)
    assert 0 < doc["scan"]["zombies"]["count"] <= 16
    assert doc["as_expected"] and code == 0


def test_container_init_run_finds_rd104_and_rd105() -> None:
    needs_namespaces()
    code, doc = run_scenario("container-init")
    assert doc["requests"]["ok"] == 16
    assert codes(doc) == {"RD104", "RD105"}
    # The server listening is the namespace's PID 1, and every request's
    # helper became its zombie.
    init = doc["scan"]
    assert init["ns_pid"] == 1 and init["is_ns_init"] is True
    assert [f["pid"] for f in doc["findings"]] == [init["pid"]] * 2
    assert doc["scan"]["zombies"]["count"] == 16
    assert doc["as_expected"] and code == 0


def test_container_init_fixed_runs_clean() -> None:
    needs_namespaces()
    code, doc = run_scenario("container-init-fixed")
    assert doc["requests"] == {"sent": 16, "ok": 16, "failed": 0, "hung": 0}
    assert doc["findings"] == [] and doc["scan"]["zombies"]["count"] == 0
    assert doc["as_expected"] and code == 0


@pytest.mark.parametrize("name", ["fixed-fork", "event-loop"])
def test_healthy_designs_run_clean(name: str) -> None:
    code, doc = run_scenario(name)
    assert doc["requests"] == {"sent": 16, "ok": 16, "failed": 0, "hung": 0}
    assert doc["findings"] == [] and doc["scan"]["zombies"]["count"] == 0
    assert doc["as_expected"] and code == 0


def test_fd_leak_run_finds_rd201() -> None:
    code, doc = run_scenario("fd-leak")
    # No EOF ever comes: every request hangs, each leaving a CLOSE_WAIT socket.
    assert doc["requests"]["hung"] == 16 and doc["requests"]["ok"] == 0
    assert doc["peak"]["close_wait"] >= 1
    assert "RD201" in codes(doc)
    assert doc["as_expected"] and code == 0


def test_blocking_run_finds_rd401() -> None:
    code, doc = run_scenario("blocking")
    assert doc["scanned"] == "during-load"
    assert doc["peak"]["accept_queue"] >= 1
    assert "RD401" in codes(doc)
    assert doc["as_expected"] and code == 0


def test_a_run_that_misbehaves_says_why_in_run_and_compare() -> None:
    from reaper_doctor.commands.scenario import run_scenario
    from reaper_doctor.model.scenario import RunSettings
    from reaper_doctor.render.scenario import render_compare_text, run_document

    # One request never fills the blocking server's queue: no RD401.
    run = run_scenario("blocking", RunSettings(requests=1, concurrency=1, grace_s=0.3))
    assert not run.as_expected and run.leftover_processes == 0
    assert run.why_not == ["missing RD401 (expected, not found)"]
    assert run_document(run)["why_not"] == run.why_not
    text = render_compare_text([run])
    assert "Not as expected\n  blocking: missing RD401 (expected, not found)" in text, text


def test_fd_leak_with_a_low_fd_limit_reaches_errno_24() -> None:
    # About 60 leaked connections fill 64 descriptors; the rest wait queued.
    # The default load grows with --fd-limit: 64 + 8 requests (60 would stop
    # at exactly 64 descriptors, with no error).
    code, doc = run_json("scenario", "run", "fd-leak", "--fd-limit", "64", "--timeout", "1",
                         "--grace", "0.5", timeout_s=120)
    assert doc["requests"]["sent"] == 72
    assert doc["server"]["fd_limit"] == 64
    assert doc["scan"]["limits"]["nofile"]["soft"] == 64
    assert any("[Errno 24]" in line for line in doc["server_errors"]), doc["server_errors"]
    assert doc["peak"]["fds"] == 64
    assert "RD301" in codes(doc) and doc["unexpected"] == []   # a by-product, allowed
    # The queue behind EMFILE is a symptom of the leak, and RD401 says so.
    for f in doc["findings"]:
        if f["code"] == "RD401":
            assert f["evidence"]["at_fd_limit"] and "RD201" in f["message"], f
    assert_nothing_left(doc)
    assert code == 0


# -- interrupted runs clean up -------------------------------------------------------

def _server_of(cli: subprocess.Popen, script: str) -> int | None:
    for pid in _pids():
        rest = stat_fields(pid)
        if rest and int(rest[1]) == cli.pid and script in " ".join(_cmdline(pid)):
            return pid
    return None


def _default_sigint() -> None:
    # A shell's background job starts with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the CLI a real Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@pytest.mark.parametrize("name, signum", [("fd-leak", signal.SIGINT),
                                          ("zombie-leak", signal.SIGTERM)])
def test_interrupted_run_leaves_nothing(spawner: Spawner, name: str, signum: int) -> None:
    # Long loads: fd-leak requests hang, zombie-leak gets many; stopped early.
    cli = subprocess.Popen([*cli_argv(), "scenario", "run", name, "--requests", "2000",
                            "--concurrency", "4", "--timeout", "2", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True, preexec_fn=_default_sigint)
    spawner.started.append(cli)
    script = str(script_path(name))
    server = wait_until(lambda: _server_of(cli, script), timeout_s=30,
                        what=f"the {name} server under the runner")
    # Mid-load: the leak has begun (descriptors held, or zombies left).
    if name == "fd-leak":
        wait_until(lambda: _fd_count(server) >= 8, timeout_s=30, what="leaked descriptors")
    else:
        wait_until(lambda: len(zombie_children(server)) >= 8, timeout_s=30, what="zombies")
    cli.send_signal(signum)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert b"Traceback" not in err
    assert in_session(server) == []          # server, children and zombies all reaped
    assert stat_fields(server) is None or int(stat_fields(server)[3]) != server


# -- bad input ---------------------------------------------------------------------

def test_unknown_scenario_is_one_line_exit_2() -> None:
    result = run_cli("scenario", "run", "no-such-scenario")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reaper-doctor: error: unknown scenario")


@pytest.mark.parametrize("args", [("--fd-limit", "3"), ("--requests", "0"),
                                  ("--timeout", "-1")])
def test_bad_run_options_are_one_line_exit_2(args: tuple[str, ...]) -> None:
    result = run_cli("scenario", "run", "zombie-leak", *args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reaper-doctor: error:"), lines


# -- compare -----------------------------------------------------------------------

def test_compare_shows_the_collapse_the_leaks_and_the_clean_designs() -> None:
    result = run_cli("scenario", "compare", "--requests", "8", "--concurrency", "4",
                     "--timeout", "1.5", "--grace", "0.3", "--json", timeout_s=240)
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "reaper-doctor/scenario-compare/1"
    assert_documented(doc)
    runs = {r["scenario"]: r for r in doc["runs"]}
    # Where no PID namespace can be made, compare skips the container scenarios.
    assert list(runs) == [name for name in SCENARIOS if not (
        SCENARIOS[name].needs_pid_namespace and namespace_skip_reason())]
    for run in runs.values():
        assert_nothing_left(run)
    blocking, fixed = runs["blocking"], runs["fixed-fork"]
    # One request at a time, 200 ms each: at most 5 per second, and the
    # clients queue behind each other (slow or hung).
    assert blocking["requests_per_s"] <= 5.5
    assert blocking["requests"]["hung"] > 0 or blocking["latency_ms"]["p50"] >= 400
    assert blocking["requests_per_s"] < fixed["requests_per_s"]
    assert runs["fd-leak"]["requests"]["hung"] == 8
    assert "RD101" in codes(runs["zombie-leak"]) and runs["zombie-leak"]["peak"]["zombies"] == 8
    assert "RD102" in codes(runs["lost-sigchld"])
    for name in ("fixed-fork", "event-loop", "container-init-fixed"):
        if name in runs:
            assert runs[name]["findings"] == [] and runs[name]["requests"]["ok"] == 8
    if "container-init" in runs:
        assert codes(runs["container-init"]) == {"RD104", "RD105"}
    assert doc["leftover_processes"] == 0
    assert result.returncode == 0


def test_run_text_output_tells_the_story() -> None:
    result = run_cli("scenario", "run", "zombie-leak", *SMALL, "--timeout", "5", "--no-color",
                     timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""                  # no progress bar when not on a terminal
    out = result.stdout
    for text in ("Scenario zombie-leak", "Load: 16 requests, 8 at a time", "Timeline (",
                 "zombies ", "RD101 zombie-leak", "Expected RD101 · found RD101",
                 "Fix: ", "0 processes left over", "Verdict: zombie-leak behaved as expected"):
        assert text in out, (text, out)
    assert "\x1b[" not in out


def test_sparkline() -> None:
    from reaper_doctor.render.scenario import sparkline

    assert sparkline([0, 0, 5, 10]) == "▁▁▄█"
    assert sparkline([3, 3]) == "▁▁"
    assert sparkline(list(range(100))).endswith("█") and len(sparkline(list(range(100)))) == 32
    assert sparkline([None, None]) == ""


def test_compare_text_table_from_hand_built_runs() -> None:
    from reaper_doctor.model.load import LoadResult
    from reaper_doctor.model.scenario import (
        RunSettings,
        ServerRun,
        ServerSpec,
        Teardown,
        TimelinePoint,
    )
    from reaper_doctor.render.scenario import render_compare_text

    settings = RunSettings(requests=10, concurrency=2, timeout_s=1.0)
    runs = []
    for name, ok, hung, zombies in (("blocking", 4, 6, 0), ("event-loop", 10, 0, 0),
                                    ("container-init-fixed", 10, 0, 0)):
        spec = ServerSpec(argv=("python3", f"{name}.py"), scenario=SCENARIOS[name])
        run = ServerRun(spec=spec, settings=settings, server_pid=1, port=1)
        run.load = LoadResult(sent=10, ok=ok, failed=0, hung=hung, p50_ms=12.5, p99_ms=20.0,
                              duration_s=2.0)
        run.timeline = [TimelinePoint(0.0, 1, zombies, 4, 0, 0), TimelinePoint(0.25, 1, zombies, 9, 0, 3)]
        run.cleanup = Teardown()
        runs.append(run)
    text = render_compare_text(runs, width=140)
    lines = text.splitlines()
    assert lines[0].startswith("10 requests per scenario, 2 at a time")
    narrow = render_compare_text(runs, width=80)
    assert max(map(len, narrow.splitlines())) <= 80 and "peak" in narrow
    header = next(line for line in lines if line.startswith("scenario"))
    for column in ("ok", "fail", "hung", "p50 ms", "req/s", "peak zombies", "peak fds",
                   "findings"):
        assert column in header
    blocking = next(line for line in lines if line.startswith("blocking"))
    assert blocking.split()[:6] == ["blocking", "4", "0", "6", "12.5", "2.0"]
    assert "scan failed" in blocking          # no scan in a hand-built run
    assert "Left over after all runs: 0 processes" in text
