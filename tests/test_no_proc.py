"""Without /proc (another OS, or not mounted), the commands that need it
refuse in one line; `scan PID` falls back to psutil. Simulated by pointing
the package's /proc root at an empty folder."""

from __future__ import annotations

import os

import pytest

from reaper_doctor import cli
from reaper_doctor.collect import proc


@pytest.fixture
def no_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(proc, "ROOT", str(tmp_path / "proc"))
    assert not proc.has_procfs()


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main.main(args=list(args), prog_name="reaper-doctor")
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("args, what", [
    (("scan",), "scan with no PID"),
    (("scan", "--json"), "scan with no PID"),
    (("watch", str(os.getpid()), "--duration", "1"), "watch"),
])
def test_commands_that_need_proc_refuse_in_one_line(no_proc, capsys, args, what):
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"reaper-doctor: error: {what} needs Linux /proc")


def test_scan_pid_falls_back_to_psutil(no_proc, capsys):
    code, out, err = _run(capsys, "scan", str(os.getpid()), "--grace", "0", "--json")
    assert code in (0, 1), err
    assert '"schema": "reaper-doctor/scan/1"' in out
