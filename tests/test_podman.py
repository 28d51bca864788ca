"""A real container, where podman is installed (root only): reaper-doctor
names it, finds its PID 1 and judges it.

The image is built offline: a root file system holding a static busybox
and its applet links, packed with tar and given to `podman import`.
Settings this needs on some machines: `--runtime runc` (crun refuses a
hybrid cgroup layout), and explicit ulimits (rootful podman may be unable
to raise them). Each container is removed with `rm -f -t 0` (SIGKILL at
once) and its conmon, which comes to this subreaper, is reaped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest
from docs_reference import assert_documented
from helpers import reap_adopted, run_cli, run_json, wait_until, zombie_children
from prometheus_client.parser import text_string_to_metric_families

# One tag per test process: suites running side by side each remove their own.
IMAGE = f"localhost/reaper-doctor-test:busybox-{os.getpid()}"
# No pids limit: the census would list the container's pids cgroup, and
# other tests, running meanwhile, read the census.
RUN = ["--runtime", "runc", "--network", "none", "--pids-limit", "-1",
       "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None,
                       reason="podman is not installed (apt-get install podman runc busybox-static)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: rootful podman"),
]


def podman(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)


def _static_busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            with open(path, "rb") as f:
                head = f.read(4096)
            if b"ld-linux" not in head:   # no program interpreter: static
                return path
    return None


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[str]:
    busybox = _static_busybox()
    if busybox is None:
        pytest.skip("no static busybox (apt-get install busybox-static)")
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "sleep", "nc", "timeout"):
        (root / "bin" / applet).symlink_to("busybox")
    archive = root.parent / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    made = podman("import", str(archive), IMAGE)
    if made.returncode != 0:
        pytest.skip(f"podman import failed: {made.stderr.strip()}")
    image_id = made.stdout.strip().splitlines()[-1]   # sha256:...
    try:
        yield IMAGE
    finally:
        podman("rmi", "-f", image_id)


class Containers:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def run(self, *args: str) -> tuple[str, int]:
        """Start a container; its full id and the host PID of its PID 1."""
        started = podman("run", "-d", *RUN, *args)
        if started.returncode != 0:
            pytest.skip(f"podman cannot run a container here: {started.stderr.strip()[-300:]}")
        cid = started.stdout.strip().splitlines()[-1]
        self.ids.append(cid)
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        return cid, pid

    def remove_all(self) -> None:
        for cid in self.ids:
            podman("rm", "-f", "-t", "0", cid)
        # conmon (double-forked by podman) was re-parented to this subreaper.
        wait_until(lambda: reap_adopted() >= 0 and not _conmon_children(), timeout_s=30,
                   what="conmon to exit")


def _conmon_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2:].split()
        if entry.isdigit() and rest[1].decode() == me and b"(conmon)" in stat:
            found.append(int(entry))
    return found


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    try:
        yield made
    finally:
        made.remove_all()


def test_scan_names_the_container_and_its_pid1_that_does_not_reap(image, containers) -> None:
    cid, pid1 = containers.run(image, "sh", "-c",
                               "(sleep 0.2 &); (sleep 0.3 &); exec sleep 60")
    wait_until(lambda: len(zombie_children(pid1)) == 2, timeout_s=20,
               what="two orphans' zombies under the container's PID 1")
    code, doc = run_json("scan", str(pid1), "--grace", "1", timeout_s=120)
    assert code == 1
    target = doc["targets"][0]
    assert target["container"] == {"runtime": "podman", "id": cid, "short_id": cid[:12],
                                   "pod": None}
    assert target["ns_pid"] == 1 and target["is_ns_init"] is True
    by_code = {f["code"]: f for f in target["findings"]}
    assert set(by_code) == {"RD104", "RD105"}, target["findings"]
    assert cid[:12] in by_code["RD104"]["message"] and "--init" in by_code["RD104"]["message"]
    assert by_code["RD104"]["evidence"]["count"] == 2
    # Prometheus: zombie and finding series carry the container's labels.
    exposition = run_cli("scan", str(pid1), "--grace", "0", "--format", "prometheus").stdout
    labels = f'container_id="{cid[:12]}"'
    assert any(line.startswith("reaper_doctor_zombie_children{") and labels in line
               and 'runtime="podman"' in line for line in exposition.splitlines()), exposition
    assert any(line.startswith("reaper_doctor_process_findings{") and labels in line
               and 'code="RD104"' in line for line in exposition.splitlines()), exposition


def test_a_container_with_an_init_gets_no_finding(image, containers) -> None:
    tini = shutil.which("tini-static")
    if tini is None:
        pytest.skip("no tini-static to give podman as --init-path (apt-get install tini)")
    cid, pid1 = containers.run("--init", "--init-path", tini, image, "sh", "-c",
                               "(sleep 0.2 &); exec sleep 60")
    child = wait_until(lambda: _children(pid1), what="the init's child")[0]
    wait_until(lambda: not zombie_children(pid1), timeout_s=20, what="the init to reap")
    code, doc = run_json("scan", str(pid1), "--grace", "1", timeout_s=120)
    target = doc["targets"][0]
    assert target["findings"] == [] and code == 0
    assert target["is_ns_init"] is True and target["container"]["id"] == cid
    assert child in [c["pid"] for c in target["tree"]["children"]]


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


# Inside the container (its own network namespace, loopback only): a
# busybox server that forks per connection and runs `sleep` on each
# accepted socket, which never closes it; three clients connect and go, so
# each `sleep` holds one CLOSE_WAIT socket on the listening port. A client
# refused (the server not listening yet) exits 1 and tries again.
CLOSE_WAIT_IN_CONTAINER = (
    "nc -ll -p 8080 -e sleep 600 & i=0; while [ $i -lt 3 ]; do "
    "timeout 1 nc 127.0.0.1 8080 </dev/null; "
    "if [ $? = 1 ]; then sleep 0.1; else i=$((i+1)); fi; done; exec sleep 600")


def test_census_rows_of_a_container_carry_its_labels(image, containers) -> None:
    """Processes the census lists without a finding (a CLOSE_WAIT socket
    each, below RD201's bar) are named with their container in the text,
    the JSON and every per-process Prometheus series."""
    cid, pid1 = containers.run(image, "sh", "-c", CLOSE_WAIT_IN_CONTAINER)
    server = wait_until(lambda: _children(pid1), what="the container's server")[0]
    holders = set(wait_until(lambda: len(_children(server)) == 3 and _children(server),
                             timeout_s=30, what="three connections to the server"))
    members = {pid1, server, *holders}
    labels = {"container_id": cid[:12], "runtime": "podman"}

    def leak_rows() -> list[dict]:
        _code, doc = run_json("scan", "--grace", "0", timeout_s=120)
        rows = [r for r in doc["machine"]["descriptor_leaks"] if r["pid"] in holders]
        if len(rows) == 3 and all(r["close_wait"] == 1 for r in rows):
            assert_documented(doc)
            return rows
        return []

    rows = wait_until(leak_rows, timeout_s=60, interval_s=0.5,
                      what="the census to see the three CLOSE_WAIT holders")
    container = {"runtime": "podman", "id": cid, "short_id": cid[:12], "pod": None}
    assert all(r["container"] == container and r["verdicts"] == [] for r in rows), rows

    text = run_cli("scan", "--grace", "0", env={**os.environ, "COLUMNS": "100"}).stdout
    leaks = text.split("Descriptor leaks")[1].split("\n\n")[0]
    for pid in holders:
        assert f"{pid} sleep · podman {cid[:12]}" in leaks, text

    exposition = run_cli("scan", "--grace", "0", "--format", "prometheus").stdout
    samples = [s for f in text_string_to_metric_families(exposition) for s in f.samples
               if s.labels.get("pid") in {str(p) for p in members}]
    close_wait = {s.labels["pid"] for s in samples
                  if s.name == "reaper_doctor_close_wait_sockets" and s.value == 1}
    assert close_wait == {str(p) for p in holders}, exposition
    unlabelled = [s for s in samples if {k: s.labels.get(k) for k in labels} != labels]
    assert not unlabelled, unlabelled

