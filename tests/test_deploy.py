"""deploy/: the alerting rules under promtool, and what each capability
setting of the DaemonSet and the systemd unit lets the tool see."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import OTHER_UID, OTHER_USERS_LEAKS, cli_argv, wait_until, zombie_children

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "reaper-doctor.rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool is not installed (Debian: prometheus)")


@needs_promtool
def test_rules_pass_promtool_check():
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


@needs_promtool
def test_rules_unit_tests_pass():
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
    assert tests
    result = subprocess.run([PROMTOOL, "test", "rules", *map(str, tests)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_can_fail(tmp_path):
    """The unit tests pin the rules: a ZombieLeak rule without its 5 m wait fails them."""
    loose = tmp_path / "reaper-doctor.rules.yml"
    loose.write_text(RULES.read_text().replace("        for: 5m\n", "        for: 1m\n", 1))
    (tmp_path / "tests").mkdir()
    for test in (DEPLOY / "prometheus" / "tests").glob("*.test.yml"):
        shutil.copy(test, tmp_path / "tests" / test.name)
    result = subprocess.run([PROMTOOL, "test", "rules",
                             *map(str, (tmp_path / "tests").glob("*.test.yml"))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ZombieLeak" in result.stdout + result.stderr


def test_daemonset_and_unit_ask_for_the_same_two_capabilities():
    daemonset = (DEPLOY / "kubernetes" / "daemonset.yaml").read_text()
    assert "hostPID: true" in daemonset
    assert 'drop: ["ALL"]' in daemonset
    assert 'add: ["DAC_READ_SEARCH", "SYS_PTRACE"]' in daemonset
    assert "readOnlyRootFilesystem: true" in daemonset
    unit = (DEPLOY / "systemd" / "reaper-doctor-exporter.service").read_text()
    assert "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SYS_PTRACE" in unit
    assert "--listen 127.0.0.1:9563" in unit


KUBECTL = shutil.which("kubectl")


def _podman_flags(pod_spec: dict) -> list[str]:
    """What podman needs to run a container as this pod spec runs its first
    (the settings that decide what the exporter can see)."""
    container = pod_spec["containers"][0]
    security = container["securityContext"]
    caps = security["capabilities"]
    flags = ["--pid=host"] if pod_spec.get("hostPID") else []
    flags += [f"--cap-drop={','.join(c.lower() for c in caps['drop'])}",
              f"--cap-add={','.join(caps['add'])}"]
    return flags


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_daemonset_parses_and_its_pod_runs_as_the_podman_test_runs_it():
    """kubectl reads the manifests offline (no cluster: `--local`); the pod
    spec asks for the settings tests/test_deploy_podman.py gives a real
    container."""
    from test_deploy_podman import DAEMONSET

    result = subprocess.run(
        [KUBECTL, "label", "--local", "-f", str(DEPLOY / "kubernetes" / "daemonset.yaml"),
         "checked=yes", "--dry-run=client", "-o", "json"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [json.loads(part) for part in result.stdout.replace("}\n{", "}\0{").split("\0")]
    assert [d["kind"] for d in docs] == ["Namespace", "DaemonSet"]
    pod = docs[1]["spec"]["template"]["spec"]
    security = pod["containers"][0]["securityContext"]
    assert pod["hostPID"] is True and "hostNetwork" not in pod
    assert security["runAsUser"] == 0 and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert pod["containers"][0]["args"][0] == "exporter"
    assert _podman_flags(pod) == DAEMONSET


SETPRIV = shutil.which("setpriv")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the scanner drops capabilities")
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
def test_what_root_sees_of_another_users_process_with_each_capability(spawner):
    """Root with no capability lists neither the descriptors nor a zombie's
    exit status of another user's process; CAP_DAC_READ_SEARCH lets it
    list (count) the descriptors, CAP_SYS_PTRACE read their links and the
    exit status; the deploy files ask for both."""
    target = subprocess.Popen(
        [SETPRIV, f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
         "/bin/sh", "-c", "(exit 3) & exec sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    spawner.started.append(target)
    wait_until(lambda: len(zombie_children(target.pid)) == 1, what="the target's zombie")
    wait_until(lambda: os.readlink(f"/proc/{target.pid}/exe").endswith("sleep"),
               what="sh to exec sleep")
    seen = {}
    for caps in ("", "dac_read_search", "sys_ptrace", "dac_read_search,sys_ptrace"):
        bounding = "-all" + "".join(f",+{c}" for c in caps.split(",") if c)
        result = subprocess.run(
            [SETPRIV, "--inh-caps=-all", f"--bounding-set={bounding}", *cli_argv(),
             "scan", str(target.pid), "--grace", "0", "--json"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result.stderr      # RD101 either way
        doc = json.loads(result.stdout)["targets"][0]
        fds = doc["fds"]
        seen[caps] = (
            fds["open"] if fds else None,
            "unknown" not in fds["by_kind"] if fds else False,
            list(doc["zombies"]["by_parent"][0]["exit_statuses"]),
            [f["code"] for f in doc["findings"]],
        )
    # (descriptors counted, their kinds known, zombie exit status, findings)
    assert seen[""] == (None, False, ["hidden"], ["RD101"])   # stat shows 0: unknown
    assert seen["dac_read_search"][0] and not seen["dac_read_search"][1]
    assert seen["dac_read_search"][2] == ["hidden"]
    assert seen["sys_ptrace"] == (None, False, ["exit 3"], ["RD101"])
    assert seen["dac_read_search,sys_ptrace"][0] and seen["dac_read_search,sys_ptrace"][1]
    assert seen["dac_read_search,sys_ptrace"][2] == ["exit 3"]


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    unit = (DEPLOY / "systemd" / "reaper-doctor-exporter.service").read_text()
    script = cli_argv()[0]
    if not os.path.isabs(script) or not os.access(script, os.X_OK):
        pytest.skip("no installed reaper-doctor script to point ExecStart at")
    assert "ExecStart=/usr/local/bin/reaper-doctor exporter" in unit
    local = tmp_path / "reaper-doctor-exporter.service"
    local.write_text(unit.replace("/usr/local/bin/reaper-doctor", script))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(local)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the scanner drops capabilities")
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK),
                    reason="no /usr/bin/python3 to run a leak as another user")
def test_census_without_the_capabilities_says_what_leak_it_cannot_name(spawner):
    """Root without CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE sees another
    user's CLOSE_WAIT sockets in the socket table but cannot read which
    process holds them: the census counts them as unattributed (text, JSON,
    Prometheus) instead of reporting no leak; with both it names the holder."""
    leaker = subprocess.Popen(
        [SETPRIV, f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", "/usr/bin/python3",
         "-c", OTHER_USERS_LEAKS], stdout=subprocess.PIPE, text=True, start_new_session=True)
    spawner.started.append(leaker)
    assert leaker.stdout is not None and leaker.stdout.readline().strip() == "ready"

    def census(caps: str, *args: str) -> subprocess.CompletedProcess:
        bounding = "-all" + "".join(f",+{c}" for c in caps.split(",") if c)
        return subprocess.run([SETPRIV, "--inh-caps=-all", f"--bounding-set={bounding}",
                               *cli_argv(), "scan", "--grace", "0", *args],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "200"})

    blind = json.loads(census("", "--json").stdout)["machine"]
    assert leaker.pid not in [h["pid"] for h in blind["descriptor_leaks"]]
    assert blind["close_wait_unattributed"] >= 3, blind["close_wait_unattributed"]
    text = census("").stdout
    assert "CLOSE_WAIT sockets on a listening port held by a process whose descriptors " \
           "could not be read" in text, text
    exposition = census("", "--format", "prometheus").stdout
    gauge = [float(line.split()[-1]) for line in exposition.splitlines()
             if line.startswith("reaper_doctor_unattributed_close_wait_sockets ")]
    assert gauge and gauge[0] >= 3, exposition
    seeing = json.loads(census("dac_read_search,sys_ptrace", "--json").stdout)["machine"]
    assert [h["close_wait"] for h in seeing["descriptor_leaks"] if h["pid"] == leaker.pid] == [3]
