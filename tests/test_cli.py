"""The command line itself: help, click's errors in one line, conflicting options."""

from __future__ import annotations

import pytest

from helpers import one_error_line, run_cli


@pytest.mark.parametrize("argv,commands", [
    ([], ("scan", "watch", "trace", "explain", "lesson", "scenario")),
    (["scenario"], ("list", "run", "compare")),
    (["lesson"], ("coalescing",)),
])
def test_a_group_without_a_command_prints_its_help(argv, commands):
    result = run_cli(*argv)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Usage: reaper-doctor") and "Commands:" in lines
    listed = {line.split()[0] for line in lines[lines.index("Commands:") + 1:] if line.strip()}
    assert set(commands) <= listed


@pytest.mark.parametrize("argv,message", [
    (["watch"], "missing argument 'PID' (see reaper-doctor watch --help)"),
    (["scan", "--formt", "x"], "no such option '--formt'; did you mean '--format'?"),
    (["scan", "1", "--format", "xml"],
     "invalid value for '--format': 'xml' is not one of 'text', 'json', 'prometheus' "),
    (["scenario", "nosuch"], "no such command 'nosuch' (see reaper-doctor scenario --help)"),
    (["scan", "1", "--grace"], "option '--grace' requires an argument"),
])
def test_click_errors_read_like_ours(argv, message):
    line = one_error_line(run_cli(*argv))
    assert line.startswith("reaper-doctor: error: " + message.split(" (see")[0]), line
    assert message in line and not line.endswith("."), line


@pytest.mark.parametrize("fmt", ["prometheus", "text"])
def test_two_formats_at_once_is_one_error(fmt):
    for argv in (["--json", "--format", fmt], ["--format", fmt, "--json"]):
        line = one_error_line(run_cli("scan", "1", "--grace", "0", *argv))
        assert line == f"reaper-doctor: error: --json and --format {fmt} ask for two formats; give one"


def test_json_twice_over_is_no_conflict():
    result = run_cli("scan", "1", "--grace", "0", "--json", "--format", "json")
    assert result.returncode in (0, 1) and result.stdout.startswith("{"), result.stderr


@pytest.mark.parametrize("argv,message", [
    (["scan", "--list-fds"], "--list-fds needs at least one PID"),
    (["scan", "1", "--list-fds", "--format", "prometheus"], "--list-fds lists descriptors in "
                                                             "text or JSON"),
])
def test_list_fds_where_it_cannot_list_is_one_error(argv, message):
    assert message in one_error_line(run_cli(*argv, "--grace", "0"))
