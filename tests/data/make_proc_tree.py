"""Writes tests/data/proc: a small /proc tree in the formats a live kernel
writes (its stat, status and limits lines copied from a real one), for
tests/test_collect_fake_proc.py. Run: python tests/data/make_proc_tree.py DIR"""

import os
import sys

root = sys.argv[1]
CLK = 100
def w(path, text, mode="w"):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, mode) as f:
        f.write(text)
def stat(pid, comm, state, ppid, pgrp, session, threads, start, exit_code, flags=4194560, cminflt=0):
    # fields 3..52
    f = [state, ppid, pgrp, session, 34816, pgrp, flags, 1200, cminflt, 0, 0, 12, 3, 0, 0, 20, 0, threads, 0,
         start, 25165824, 2500, "18446744073709551615", 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 1, 0, 0, 0, 0, 0,
         0, 0, 0, 0, 0, 0, exit_code]
    assert len(f) == 50
    return f"{pid} ({comm}) " + " ".join(str(x) for x in f) + "\n"
def status(name, state, pid, ppid, uid, threads, fdsize=64, sigcgt="0000000000000000", sigblk="0000000000000000", sigign="0000000000000000", capeff="0000000000000000", shdpnd="0000000000000000"):
    words = {"R": "R (running)", "S": "S (sleeping)", "Z": "Z (zombie)"}[state]
    return (f"Name:\t{name}\nUmask:\t0022\nState:\t{words}\nTgid:\t{pid}\nNgid:\t0\nPid:\t{pid}\nPPid:\t{ppid}\n"
            f"TracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\nFDSize:\t{fdsize}\n"
            f"Groups:\t \nNStgid:\t{pid}\nNSpid:\t{pid}\nNSpgid:\t{pid}\nNSsid:\t{pid}\nThreads:\t{threads}\n"
            f"SigQ:\t0/96364\nSigPnd:\t0000000000000000\nShdPnd:\t{shdpnd}\nSigBlk:\t{sigblk}\nSigIgn:\t{sigign}\n"
            f"SigCgt:\t{sigcgt}\nCapInh:\t0000000000000000\nCapPrm:\t{capeff}\nCapEff:\t{capeff}\n"
            f"CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n"
            f"voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t2\n")
LIMIT_ROWS = [
    ("Max cpu time", "unlimited", "unlimited", "seconds"),
    ("Max file size", "unlimited", "unlimited", "bytes"),
    ("Max data size", "unlimited", "unlimited", "bytes"),
    ("Max stack size", "8388608", "unlimited", "bytes"),
    ("Max core file size", "0", "unlimited", "bytes"),
    ("Max resident set", "unlimited", "unlimited", "bytes"),
    ("Max processes", "{nproc}", "{nproc}", "processes"),
    ("Max open files", "{nofile}", "4096", "files"),
    ("Max locked memory", "8388608", "8388608", "bytes"),
    ("Max address space", "unlimited", "unlimited", "bytes"),
    ("Max file locks", "unlimited", "unlimited", "locks"),
    ("Max pending signals", "96364", "96364", "signals"),
    ("Max msgqueue size", "819200", "819200", "bytes"),
    ("Max nice priority", "0", "0", ""),
    ("Max realtime priority", "0", "0", ""),
    ("Max realtime timeout", "unlimited", "unlimited", "us"),
]


def limits(nproc: int, nofile: int) -> str:
    """/proc/<pid>/limits: the kernel prints "%-25s %-20s %-20s %-10s"."""
    rows = [("Limit", "Soft Limit", "Hard Limit", "Units"), *LIMIT_ROWS]
    values = {"{nproc}": str(nproc), "{nofile}": str(nofile)}
    return "".join(f"{a:<25} {values.get(b, b):<20} {values.get(c, c):<20} {d:<10}\n"
                   for a, b, c, d in rows)
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     \n"
w("uptime", "2000.00 3500.00\n")
w("loadavg", "0.10 0.20 0.30 1/120 205\n")
w("sys/kernel/pid_max", "32768\n")
w("sys/fs/file-nr", "1024\t0\t9223372036854775807\n")
w("1/stat", stat(1, "systemd", "S", 0, 1, 1, 1, 10, 0, flags=4194560, cminflt=5000))
w("1/status", status("systemd", "S", 1, 0, 0, 1, capeff="000001ffffffffff"))
w("1/cmdline", "/sbin/init\0", "w")
w("1/task/1/children", "100 200 ")
# the server: a fork-per-connection python server that never reaps
w("100/stat", stat(100, "python3", "S", 1, 100, 100, 1, 150000, 0))
w("100/status", status("python3", "S", 100, 1, 1000, 1))
w("100/cmdline", "python3\0server.py\0--port\0008080\0")
w("100/limits", limits(512, 64))
w("100/cgroup", "0::/user.slice/server.service\n")
w("100/task/100/children", "101 102 103 104 ")
for name in ("tcp6", "udp", "udp6"):
    w(f"100/net/{name}", TCP_HEADER if name.startswith("tcp") else "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops             \n")
w("100/net/tcp", TCP_HEADER +
  "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 7001 1 0000000000000000 100 0 0 10 0                     \n"
  "   1: 0100007F:1F90 0100007F:D431 08 00000000:00000001 00:00000000 00000000  1000        0 7002 1 0000000000000000 20 4 30 10 -1                    \n")
w("100/net/unix", "Num       RefCount Protocol Flags    Type St Inode Path\n")
w("100/fdinfo/5", "pos:\t4096\nflags:\t02102001\nmnt_id:\t29\nino:\t1234\n")
# zombies: exit 3, and killed by SIGKILL
w("101/stat", stat(101, "python3", "Z", 100, 100, 100, 1, 160000, 3 << 8, cminflt=0))
w("101/status", status("python3", "Z", 101, 100, 1000, 1))
w("102/stat", stat(102, "python3", "Z", 100, 100, 100, 1, 170000, 9, cminflt=0))
w("102/status", status("python3", "Z", 102, 100, 1000, 1))
# a live child holding a copy of the listening socket
w("103/stat", stat(103, "python3", "S", 100, 100, 100, 1, 180000, 0))
w("103/status", status("python3", "S", 103, 100, 1000, 1))
w("103/cmdline", "python3\0server.py\0--port\0008080\0")
w("103/limits", limits(512, 64))
w("103/task/103/children", "")
# 104 is listed as a child but has exited since: no directory.
# another user's daemon, outside the tree
w("200/stat", stat(200, "sshd", "S", 1, 200, 200, 1, 2000, 0))
w("200/status", status("sshd", "S", 200, 1, 0, 1))
w("200/cmdline", "sshd: /usr/sbin/sshd -D\0")
# the reading process's view: mountinfo without cgroup mounts
w("100/mountinfo", "22 27 0:21 / /proc rw,relatime - proc proc rw\n23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n")
links = {
    "100/fd/0": "/dev/null", "100/fd/1": "pipe:[5001]", "100/fd/2": "pipe:[5001]",
    "100/fd/3": "socket:[7001]", "100/fd/4": "socket:[7002]", "100/fd/5": "/var/log/server.log",
    "103/fd/0": "/dev/null", "103/fd/3": "socket:[7001]", "103/fd/4": "socket:[7003]",
    "self": "100",
}
for path, target in links.items():
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    os.symlink(target, full)
for pid in ("100", "103"):
    os.makedirs(os.path.join(root, pid, "ns"), exist_ok=True)
    os.symlink("net:[4026531840]", os.path.join(root, pid, "ns", "net"))
