"""The package's layout holds: ruff and mypy find nothing, and the import
contract in pyproject.toml (the layers, and no I/O below collect/system)
is kept. The tools come from the test extra (`pip install '.[test]'`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed (pip install '.[test]')")
        return found
    return str(path)


def _run(args: list[str], cwd: Path,
         pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        # The checkout's copy, not an installed one, is the one analysed.
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ruff_finds_nothing() -> None:
    done = _run([_tool("ruff"), "check", "--no-cache", "."], REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    done = _run([_tool("mypy"), "--cache-dir", str(tmp_path / "cache")], REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_contract_is_kept() -> None:
    done = _run([_tool("lint-imports"), "--no-cache"], REPO, pythonpath=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_import_contract_catches_a_rule_that_reads_proc(tmp_path: Path) -> None:
    """The same check on a copy where a diagnose module imports collect and
    os: both contracts break (so the check above can fail)."""
    shutil.copytree(REPO / "reaper_doctor", tmp_path / "reaper_doctor",
                    ignore=shutil.ignore_patterns("__pycache__", "scenarios"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    rule = tmp_path / "reaper_doctor" / "diagnose" / "zombies.py"
    rule.write_text(rule.read_text() + "\nimport os  # noqa: E402\n"
                    "from ..collect import proc  # noqa: E402\n")
    done = _run([_tool("lint-imports"), "--no-cache"], tmp_path, pythonpath=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "2 broken" in done.stdout, done.stdout
    assert "reaper_doctor.diagnose.zombies -> reaper_doctor.collect.proc" in done.stdout
