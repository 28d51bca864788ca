"""`reaper-doctor explain` and `scenario list`, through the real command line."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from reaper_doctor.catalog import CODES, EXPLAIN
from reaper_doctor.model.scenario import SCENARIOS


def test_every_code_has_a_teaching_text() -> None:
    assert set(EXPLAIN) == set(CODES)
    for code, text in EXPLAIN.items():
        lines = text.splitlines()
        assert lines[0].startswith(f"{code} {CODES[code].slug} ")
        assert 15 <= len(lines) <= 45, (code, len(lines))
        for heading in ("What it means", "How reaper-doctor detects it", "Buggy code",
                        "Fixed code", "Confirm the fix"):
            assert heading in text, (code, heading)
        assert "reaper-doctor" in text.split("Confirm the fix")[1]


@pytest.mark.parametrize("code", sorted(CODES))
def test_explain_each_code(code: str) -> None:
    result = run_cli("explain", code.lower())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(code) and "Fixed code" in result.stdout


def test_explain_by_slug_and_json() -> None:
    result = run_cli("explain", "zombie-leak", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["code"], doc["slug"], doc["severity"]) == ("RD101", "zombie-leak", "error")
    assert doc["text"] == EXPLAIN["RD101"]


def test_explain_without_code_lists_all() -> None:
    result = run_cli("explain")
    assert result.returncode == 0, result.stderr
    for c in CODES.values():
        assert c.code in result.stdout and c.slug in result.stdout
    doc = json.loads(run_cli("explain", "--json").stdout)
    assert [c["code"] for c in doc["codes"]] == list(CODES)


@pytest.mark.parametrize("code", ["RD999", "nonsense", "RD10"])
def test_explain_unknown_code_is_one_line_exit_2(code: str) -> None:
    result = run_cli("explain", code)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reaper-doctor: error: unknown finding code")
    assert "Traceback" not in result.stderr


def test_scenario_list() -> None:
    result = run_cli("scenario", "list")
    assert result.returncode == 0, result.stderr
    for s in SCENARIOS.values():
        assert s.name in result.stdout
    assert "RD101" in result.stdout and "RD401" in result.stdout


def test_scenario_list_json() -> None:
    result = run_cli("scenario", "list", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "reaper-doctor/scenario-list/1"
    by_name = {s["name"]: s for s in doc["scenarios"]}
    assert set(by_name) == set(SCENARIOS)
    assert by_name["lost-sigchld"]["expected"] == ["RD102"]
    assert by_name["fixed-fork"]["expected"] == []
