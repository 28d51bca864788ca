"""deploy/ on a real container runtime (podman, root): the DaemonSet's
settings, and the systemd unit under a real systemd.

With no registry to pull the Containerfile's base image from, each
container's root is this machine's own, under an overlay (`--rootfs /:O`:
what the container writes stays in the container), with the suite's
Python and reaper-doctor mounted read-only where they are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import OTHER_UID, OTHER_USERS_LEAKS, reap_adopted, wait_until, zombie_children
from test_podman import RUN, _conmon_children, podman, pytestmark  # noqa: F401 - pytestmark applies

import reaper_doctor

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# deploy/kubernetes/daemonset.yaml's pod, as podman flags (test_deploy.py
# checks them against the manifest): the node's PID namespace (hostPID),
# every capability dropped but two; also a read-only root file system and a
# network namespace of its own.
DAEMONSET = ["--pid=host", "--cap-drop=all", "--cap-add=DAC_READ_SEARCH,SYS_PTRACE"]
DEBIAN_PYTHON = "/usr/bin/python3"


def _suite_mounts() -> list[str]:
    """--volume flags for the suite's Python and reaper-doctor, read-only."""
    package_root = Path(reaper_doctor.__file__).resolve().parent.parent
    # The container's root is this machine's own (an overlay), /usr with it:
    # mounting a Debian Python's /usr read-only over it would also make
    # /usr/local read-only, where the systemd test installs its launcher.
    mounts = {m for m in (sys.prefix, sys.base_prefix, str(package_root))
              if m != "/usr" and not m.startswith("/usr/")}
    return [arg for m in sorted(mounts) for arg in ("--volume", f"{m}:{m}:ro")]


def _reap_conmon() -> None:
    # conmon (double-forked by podman) comes to this subreaper.
    wait_until(lambda: reap_adopted() >= 0 and not _conmon_children(), timeout_s=30,
               what="conmon to exit")


@pytest.fixture(scope="module")
def host_root() -> None:
    """Skip unless podman can run a container on this machine's own root."""
    tried = podman("run", "--rm", *RUN, "--read-only", "--read-only-tmpfs=false",
                   "--rootfs", "/:O", "/bin/true")
    _reap_conmon()
    if tried.returncode != 0:
        pytest.skip("podman cannot run this machine's root as a container: "
                    + tried.stderr.strip()[-300:])


def _in_daemonset_container(settings: list[str], *args: str) -> subprocess.CompletedProcess:
    script = os.path.join(os.path.dirname(sys.executable), "reaper-doctor")
    argv = [script] if os.path.exists(script) else [sys.executable, "-m", "reaper_doctor"]
    try:
        return podman("run", "--rm", *RUN, "--read-only", "--read-only-tmpfs=false",
                      *settings, *_suite_mounts(), "--rootfs", "/:O", *argv, *args,
                      timeout_s=180)
    finally:
        _reap_conmon()


def _start_other_users_leaker(spawner) -> subprocess.Popen:
    if not os.access(DEBIAN_PYTHON, os.X_OK) or shutil.which("setpriv") is None:
        pytest.skip(f"needs {DEBIAN_PYTHON} and setpriv to run a process as another user")
    leaker = subprocess.Popen(
        ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", DEBIAN_PYTHON,
         "-c", OTHER_USERS_LEAKS], stdout=subprocess.PIPE, text=True, start_new_session=True)
    spawner.started.append(leaker)
    assert leaker.stdout is not None and leaker.stdout.readline().strip() == "ready"
    wait_until(lambda: len(zombie_children(leaker.pid)) == 1, what="the leaker's zombie")
    return leaker


@pytest.mark.parametrize("settings", ["daemonset", "no capabilities", "no hostPID"])
def test_what_the_daemonset_settings_see_of_another_users_leaks(settings, spawner,
                                                               host_root) -> None:
    """With the DaemonSet's settings the census sees another user's zombie
    and CLOSE_WAIT leak (RD101, RD201), and `scan PID` each descriptor and
    the zombie's exit status; without the two capabilities, only the
    zombie; without hostPID, nothing of the host (and it says so)."""
    me = _start_other_users_leaker(spawner).pid
    flags = {"daemonset": DAEMONSET,
             "no capabilities": ["--pid=host", "--cap-drop=all"],
             "no hostPID": ["--cap-drop=all", "--cap-add=DAC_READ_SEARCH,SYS_PTRACE"]}[settings]
    census = _in_daemonset_container(flags, "scan", "--grace", "0", "--json")
    assert census.returncode in (0, 1), census.stderr
    doc = json.loads(census.stdout)
    machine = doc["machine"]
    zombies = [p["zombies"] for p in machine["zombie_parents"] if p["pid"] == me]
    close_wait = [h["close_wait"] for h in machine["descriptor_leaks"] if h["pid"] == me]
    codes = sorted(f["code"] for t in doc["targets"] for f in t["findings"] if f["pid"] == me)
    target = _in_daemonset_container(flags, "scan", str(me), "--grace", "0", "--json")
    if settings == "no hostPID":
        # Its own PID namespace: only itself, and it says so.
        assert machine["pid_namespace"]["is_host"] is False and machine["processes"] <= 2
        assert (zombies, close_wait, codes) == ([], [], [])
        assert target.returncode == 2 and "no process with PID" in target.stderr
        return
    scanned = json.loads(target.stdout)["targets"][0]
    statuses = list(scanned["zombies"]["by_parent"][0]["exit_statuses"])
    assert machine["pid_namespace"]["is_host"] is True and zombies == [1]
    if settings == "daemonset":
        # Everything: the CLOSE_WAIT holder, what each descriptor is, the exit status.
        assert close_wait == [3] and codes == ["RD101", "RD201"], (close_wait, codes)
        assert scanned["fds"]["close_wait"] == 3 and statuses == ["exit 3"]
    else:
        # Zombies and limits only: another user's descriptors cannot be
        # listed, so the CLOSE_WAIT sockets have no known holder, and a
        # zombie's exit status is hidden.
        assert close_wait == [] and codes == ["RD101"], (close_wait, codes)
        # Nor can it read which network namespace the host's processes are
        # in (CAP_SYS_PTRACE): the host's sockets go unread, and it says so.
        assert machine["netns_unreadable"] > 0
        assert scanned["fds"] is None and statuses == ["hidden"]


SYSTEMD = "/lib/systemd/systemd"
UNIT = DEPLOY / "systemd" / "reaper-doctor-exporter.service"
# The unit's ExecStart: reaper-doctor where `pip install` puts it, run by
# the system's Python with the suite's packages.
LAUNCHER = f"""#!{DEBIAN_PYTHON}
import site, sys
site.addsitedir("/opt/reaper-doctor-site")
from reaper_doctor.cli import run
sys.exit(run())
"""
# Scrape the exporter from inside the container (its own loopback): the
# series of one PID, and the census duration.
SCRAPE = """
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9563/metrics", timeout=60).read().decode()
print("\\n".join(line for line in text.splitlines() if f'pid="{sys.argv[1]}"' in line))
"""


def test_the_systemd_unit_runs_under_systemd(tmp_path, host_root) -> None:
    """deploy/'s unit, unchanged, under systemd as PID 1 of a container:
    it starts with exactly its two capabilities and a read-only root, sees
    another user's zombie and CLOSE_WAIT leak, and stops cleanly."""
    if not os.path.exists(SYSTEMD):
        pytest.skip("systemd is not installed")
    debian = subprocess.run([DEBIAN_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                            capture_output=True, text=True) if os.path.exists(DEBIAN_PYTHON) else None
    if debian is None or debian.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(f"the suite's Python is not {DEBIAN_PYTHON}'s version (its packages are "
                    "lent to that Python)")
    site_packages = next(p for p in sys.path if p.endswith("site-packages")
                         and p.startswith(sys.prefix))
    for file, text in (("reaper-doctor", LAUNCHER), ("leak.py", OTHER_USERS_LEAKS),
                       ("scrape.py", SCRAPE)):
        (tmp_path / file).write_text(text)
        (tmp_path / file).chmod(0o644)   # the leaker, another user, reads its script
    tmp_path.chmod(0o755)
    name = f"reaper-doctor-systemd-{uuid.uuid4().hex[:8]}"
    started = podman(
        "run", "-d", "--name", name, *RUN, "--systemd=always",
        # systemd needs CAP_SYS_ADMIN to sandbox the unit (mount namespaces);
        # the two others, for the unit's bounding set to keep them.
        "--cap-add=SYS_ADMIN,DAC_READ_SEARCH,SYS_PTRACE",
        "--tmpfs", "/tmp:rw,notmpcopyup", "--tmpfs", "/run:rw,notmpcopyup",
        "--volume", f"{UNIT}:/etc/systemd/system/{UNIT.name}:ro",
        "--volume", f"{tmp_path}:/mnt/test:ro",
        "--volume", f"{site_packages}:/opt/reaper-doctor-site:ro", *_suite_mounts(),
        "--rootfs", "/:O", SYSTEMD, "systemd.unit=basic.target")
    try:
        if started.returncode != 0:
            pytest.skip("podman cannot run systemd in a container here: "
                        + started.stderr.strip()[-300:])

        def inside(*argv: str) -> subprocess.CompletedProcess:
            return podman("exec", name, *argv, timeout_s=120)

        state = [""]

        def booted() -> bool:
            state[0] = inside("systemctl", "is-system-running").stdout.strip()
            return state[0] in ("running", "degraded")

        try:
            wait_until(booted, timeout_s=60, interval_s=0.5, what="systemd to boot")
        except AssertionError:
            # The unit is not at fault: systemd itself did not come up in a
            # container here (seen in a chroot: it stays "starting").
            jobs = inside("systemctl", "list-jobs", "--no-legend").stdout.strip()
            pytest.skip(f"systemd did not boot in a container here within 60 s "
                        f"(is-system-running: {state[0] or 'no answer'}; jobs: {jobs[:200]})")
        installed = inside("sh", "-c", "install -m 755 /mnt/test/reaper-doctor /usr/local/bin/"
                           " && systemctl daemon-reload"
                           f" && systemctl start {UNIT.name}")
        assert installed.returncode == 0, installed.stderr
        leaker = inside("sh", "-c", f"setsid setpriv --reuid={OTHER_UID} --regid={OTHER_UID} "
                        f"--clear-groups {DEBIAN_PYTHON} /mnt/test/leak.py 600 "
                        "</dev/null >/dev/null 2>&1 & echo $!")
        leaker_pid = leaker.stdout.strip()
        wait_until(lambda: "Z" in inside("ps", "-o", "stat=", "--ppid", leaker_pid).stdout,
                   timeout_s=30, what="the leaker's zombie")
        main_pid = inside("systemctl", "show", "-P", "MainPID", UNIT.name).stdout.strip()
        status = inside("cat", f"/proc/{main_pid}/status").stdout
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("Cap")}
        two = (1 << 2) | (1 << 19)        # CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE
        assert caps["CapEff"] == caps["CapBnd"] == two, caps
        root = [line.split()[5] for line in
                inside("cat", f"/proc/{main_pid}/mountinfo").stdout.splitlines()
                if line.split()[4] == "/"]
        assert root and root[-1].split(",")[0] == "ro", root

        def series() -> str:
            got = inside(DEBIAN_PYTHON, "/mnt/test/scrape.py", leaker_pid)
            return got.stdout if ('close_wait_sockets{' in got.stdout
                                  and 'code="RD201"' in got.stdout) else ""

        text = wait_until(series, timeout_s=90, interval_s=1,
                          what="the exporter to serve the leaker's series")
        assert "reaper_doctor_zombie_children{" in text and 'code="RD101"' in text, text
        assert any(line.startswith("reaper_doctor_close_wait_sockets{")
                   and line.endswith(" 3.0") for line in text.splitlines()), text
        stopped = inside("systemctl", "stop", UNIT.name)
        assert stopped.returncode == 0, stopped.stderr
        result = inside("systemctl", "show", "-P", "Result", UNIT.name).stdout.strip()
        journal = inside("journalctl", "-u", UNIT.name, "--no-pager").stdout
        assert result == "success" and "exporter stopped" in journal, journal
    finally:
        podman("rm", "-f", "-t", "0", name)
        _reap_conmon()
