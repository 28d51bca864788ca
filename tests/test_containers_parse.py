"""Containers from /proc/<pid>/cgroup text, and the namespace fields of
/proc/<pid>/status, on captured and documented text."""

from __future__ import annotations

import pytest

from reaper_doctor.model import Container
from reaper_doctor.parse.containers import (
    HOST_PID_NS_INODE, container_from_cgroup, parse_ns_inode, parse_nspid,
    sigterm_disposition, waits_for_signals,
)

ID = "a1df1d9cf5b31181dabc83b13c44643c82878a530392072163c9dd60ee81c2e4"
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
POD = "7f1a3c2e-9b4d-4e8f-a6b1-c2d3e4f5a6b7"

# Captured: PID 1 of a rootful podman 4.3 container (runc, cgroupfs
# manager) on a hybrid host: v1 hierarchies carry the path, v2 as well.
PODMAN_HYBRID = f"""9:name=systemd:/libpod_parent/libpod-{ID}
8:pids:/libpod_parent/libpod-{ID}
7:blkio:/libpod_parent/libpod-{ID}
6:freezer:/libpod_parent/libpod-{ID}
5:devices:/libpod_parent/libpod-{ID}
4:memory:/libpod_parent/libpod-{ID}
3:cpuset:/libpod_parent/libpod-{ID}
2:cpuacct:/libpod_parent/libpod-{ID}
1:cpu:/libpod_parent/libpod-{ID}
0::/libpod_parent/libpod-{ID}
"""
# Captured: its conmon, the runtime's monitor, outside the container.
PODMAN_CONMON = """9:name=systemd:/
8:pids:/libpod_parent/conmon
4:memory:/libpod_parent/conmon
1:cpu:/libpod_parent/conmon
0::/
"""
# Captured: a process of this test machine, in a sandbox whose cgroup
# names carry 32 hex digits: not a container layout we know.
SANDBOX = """9:name=systemd:/
8:pids:/
4:memory:/process_api/e2ef3bdd8a6c20bd8f9e46b8db6de20c
1:cpu:/
0::/
"""


@pytest.mark.parametrize("text, expected", [
    (PODMAN_HYBRID, Container("podman", ID)),
    # docker, cgroupfs driver (v1) and systemd driver (v2)
    (f"12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n", Container("docker", ID)),
    (f"0::/system.slice/docker-{ID}.scope\n", Container("docker", ID)),
    # docker in docker: the innermost container
    (f"0::/docker/{ID2}/docker/{ID}\n", Container("docker", ID)),
    # podman rootless, systemd manager (v2), the container's own sub-cgroup
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n",
     Container("podman", ID)),
    # Kubernetes with containerd, systemd driver (v2)
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
     f"{POD.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n",
     Container("containerd", ID, POD)),
    # Kubernetes, guaranteed QoS, CRI-O
    (f"0::/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{ID}.scope\n",
     Container("cri-o", ID, POD)),
    # Kubernetes, cgroupfs driver (v1): the runtime is not named
    (f"8:pids:/kubepods/besteffort/pod{POD}/{ID}\n0::/\n", Container("kubernetes", ID, POD)),
    # only the pod's cgroup
    (f"0::/kubepods/burstable/pod{POD}\n", Container("kubernetes", POD, POD)),
    # CRI-O outside Kubernetes
    (f"0::/machine.slice/crio-{ID}.scope\n", Container("cri-o", ID)),
    # systemd-nspawn, as a service and as a registered machine
    ("0::/machine.slice/systemd-nspawn@web.service/payload\n",
     Container("systemd-nspawn", "web")),
    ("0::/machine.slice/machine-build\\x2d01.scope\n", Container("systemd-nspawn", "build-01")),
    # LXC 4+ / LXD, and older LXC (v1)
    ("0::/lxc.payload.web1/init.scope\n", Container("lxc", "web1")),
    ("5:pids:/lxc/web1\n0::/\n", Container("lxc", "web1")),
])
def test_known_layouts(text, expected):
    assert container_from_cgroup(text) == expected


@pytest.mark.parametrize("text", [
    PODMAN_CONMON,
    SANDBOX,
    "0::/\n",
    "",
    "0::/init.scope\n",
    "0::/user.slice/user-1000.slice/session-3.scope\n",
    "0::/system.slice/docker.service\n",                     # dockerd itself
    f"0::/machine.slice/libpod-conmon-{ID}.scope\n",          # podman's monitor
    f"0::/kubepods.slice/crio-conmon-{ID}.scope\n",           # CRI-O's monitor
    "0::/lxc.monitor.web1\n",                                 # LXC's monitor
    "0::/machine.slice/machine-qemu\\x2d1\\x2dvm.scope/libvirt/emulator\n",  # a VM
    f"0::/somewhere/{ID}\n",                                  # a bare id, nobody's
    f"0::/system.slice/docker-{ID[:40]}.scope\n",             # not a full id
    "garbage without colons\n",
])
def test_unknown_layouts_give_no_container(text):
    assert container_from_cgroup(text) is None


def test_short_id_is_twelve_hex_digits_and_names_stay_whole():
    assert Container("podman", ID).short_id == "a1df1d9cf5b3"
    assert Container("lxc", "web1").short_id == "web1"


def test_nspid():
    # Captured: PID 1 of that podman container, seen from the host.
    assert parse_nspid("14958\t1") == (14958, 1)
    assert parse_nspid(b"14958\t1") == (14958, 1)
    assert parse_nspid("4242") == (4242,)
    assert parse_nspid("9000\t120\t1") == (9000, 120, 1)   # a nested namespace
    assert parse_nspid("") == () and parse_nspid("x") == ()


def test_ns_inode():
    assert parse_ns_inode("pid:[4026531836]") == HOST_PID_NS_INODE
    assert parse_ns_inode("pid:[4026532252]") == 4026532252
    assert parse_ns_inode("pid:4026532252") is None and parse_ns_inode("") is None


TERM = 1 << 14   # SIGTERM (15) is bit 14


def test_sigterm_disposition():
    # A shell or sleep as PID 1: no handler (captured masks all zero).
    assert sigterm_disposition(0, 0, 0) == "default"
    # tini (captured) sleeps in sigtimedwait most of the time: the waited
    # signals are out of SigBlk then, and SigCgt is empty.
    assert sigterm_disposition(0, 0x300000, 0, waits_for_signals=True) == "waited"
    # catatonit and systemd: blocked, read from a signalfd.
    assert sigterm_disposition(TERM, 0, 0) == "blocked"
    assert sigterm_disposition(0, 0, TERM | 2) == "caught"
    assert sigterm_disposition(0, TERM, 0) == "ignored"
    assert sigterm_disposition(None, 0, 0) is None


def test_waits_for_signals_from_wchan():
    assert waits_for_signals("do_sigtimedwait.isra.0")      # captured: tini
    assert waits_for_signals("do_sigtimedwait")
    assert not waits_for_signals("hrtimer_nanosleep")       # sleep
    assert not waits_for_signals("0")                       # running, or not readable
