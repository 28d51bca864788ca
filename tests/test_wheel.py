"""The wheel built from the checkout ships the scenario scripts, and an
installed copy (not the checkout) finds and runs them: they must also work after a plain
`pip install .`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from reaper_doctor.model.scenario import SCENARIOS

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
    assert "reaper_doctor/commands/scenario.py" in names


def _suite_site_dirs() -> list[str]:
    """The site-packages folders of the environment this suite runs in (a
    venv's own, not its base interpreter's): where psutil, click, tabulate
    and pip are installed for the suite."""
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def test_installed_wheel_lists_and_runs_scenarios(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # No --system-site-packages: the base interpreter of a fresh machine has
    # none of the dependencies. A .pth file puts the suite's own site-packages
    # after the new venv's, so psutil, click, tabulate and pip come from the
    # environment the suite runs in, and the wheel (installed into the venv
    # itself, first on sys.path) is what gets imported.
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    (site,) = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                   ).stdout.split()
    Path(site, "suite-environment.pth").write_text("".join(d + "\n" for d in _suite_site_dirs()))
    # --ignore-installed: pip sees the suite's own copy of reaper-doctor through
    # the .pth and would call the wheel "already satisfied".
    installed = _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                      "--no-index", "--ignore-installed", str(wheel)])
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
