"""The wheel built from the checkout ships the scenario scripts, and an
installed copy (not the checkout) finds and runs them (DESIGN.md: "must
also work after a plain `pip install .`")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from reaper_doctor.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
# Signs that the build backend (hatchling) could not be fetched: no network
# and no local copy. Anything else is a real failure.
OFFLINE = ("No matching distribution found", "Could not find a version",
           "Failed to establish a new connection", "Network is unreachable",
           "Temporary failure in name resolution")


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env,
                          **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                   "-w", str(out), str(ROOT)])
    if result.returncode != 0:
        text = result.stdout + result.stderr
        if any(sign in text for sign in OFFLINE):
            pytest.skip("cannot build the wheel offline (hatchling not available): "
                        + text.strip().splitlines()[-1])
        raise AssertionError(f"pip wheel failed:\n{text}")
    (built,) = out.glob("reaper_doctor-*.whl")
    return built


def test_wheel_ships_the_scenario_scripts(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for s in SCENARIOS.values():
        assert f"reaper_doctor/scenarios/{s.script}" in names, sorted(names)
    assert "reaper_doctor/runner.py" in names


def test_installed_wheel_lists_and_runs_scenarios(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # --system-site-packages: psutil, click, tabulate and pip come from this
    # Python; the wheel itself goes into the venv, without its dependencies.
    made = _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                 str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                      "--no-index", str(wheel)])
    assert installed.returncode == 0, installed.stderr
    command = str(venv / "bin" / "reaper-doctor")
    # Run from an empty folder, so the checkout cannot be imported by accident.
    listed = _run([command, "scenario", "list", "--json"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [s["name"] for s in json.loads(listed.stdout)["scenarios"]] == list(SCENARIOS)
    ran = _run([command, "scenario", "run", "zombie-leak", "--requests", "4",
                "--concurrency", "2", "--timeout", "5", "--grace", "0.3", "--json"],
               cwd=tmp_path)
    assert "Traceback" not in ran.stderr, ran.stderr
    doc = json.loads(ran.stdout)
    script = Path(doc["server"]["script"])
    assert script.name == "zombie_leak.py"
    assert script.is_relative_to(venv), script   # the installed copy, not the checkout
    assert doc["leftover_processes"] == 0 and ran.returncode == 0, doc
