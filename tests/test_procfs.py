"""Parsers on captured /proc text (the only place fixtures stand in for /proc)."""

from __future__ import annotations

import signal

from reaper_doctor.model.kernel import UnixSocketRow
from reaper_doctor.parse import procfs

# A zombie whose comm holds ") (" — a naive split reads the wrong fields.
STAT_ZOMBIE = (b"4711 (a) b (c) Z 4242 4242 4242 0 -1 4227180 63 0 0 0 0 0 0 0 20 0 1 0 "
               b"24484 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 "
               b"0 0 0 0 768\n")

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
PPid:\t1
Uid:\t1000\t1000\t1000\t1000
Threads:\t2
SigQ:\t0/96365
SigPnd:\t0000000000000000
ShdPnd:\t0000000000010000
SigBlk:\t0000000000000000
SigIgn:\t0000000001001000
SigCgt:\t0000000000010002
CapEff:\t0000000000000000
"""

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max processes             63000                63000                processes
Max open files            1024                 4096                 files
"""

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000006 00:00000000 00000000     0        0 4711 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 08 00000000:00000001 00:00000000 00000000     0        0 4712 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D432 06 00000000:00000000 03:00000BB8 00000000     0        0 0 3 0
"""


def test_parse_stat_splits_after_the_last_paren():
    st = procfs.parse_stat(STAT_ZOMBIE)
    assert (st.pid, st.comm, st.state, st.ppid) == (4711, "a) b (c", "Z", 4242)
    assert (st.pgrp, st.session) == (4242, 4242)
    assert st.threads == 1 and st.start_ticks == 24484 and st.exit_code == 768


def test_decode_wait_status():
    assert procfs.decode_wait_status(768).describe() == "exit 3"
    assert procfs.decode_wait_status(0).describe() == "exit 0"
    assert procfs.decode_wait_status(9).describe() == "SIGKILL"
    assert procfs.decode_wait_status(139).describe() == "SIGSEGV (core)"
    assert procfs.decode_wait_status(0, may_be_hidden=True).describe() == "hidden"
    assert procfs.decode_wait_status(256, may_be_hidden=True).describe() == "exit 1"


def test_status_and_sigchld_disposition():
    status = procfs.parse_status(STATUS)
    assert status.real_uid == 1000 and status.threads == 2 and status.ppid == 1
    assert procfs.sigchld_disposition(status) == "caught"
    assert procfs.sigchld_disposition(status, any_thread_blocks=True) == "blocked"
    ignored = procfs.parse_status(STATUS.replace("0000000001001000", "0000000001011000")
                                  .replace("0000000000010002", "0000000000000002"))
    assert procfs.sigchld_disposition(ignored) == "ignored"
    plain = procfs.parse_status(STATUS.replace("0000000000010002", "0000000000000002"))
    assert procfs.sigchld_disposition(plain) == "default"
    assert not procfs.parse_status("Name:\tx\nPPid:\t1\n").has_sig_masks


def test_parse_limits():
    limits = procfs.parse_limits(LIMITS)
    assert limits["Max open files"] == (1024, 4096)
    assert limits["Max processes"] == (63000, 63000)
    assert limits["Max cpu time"] == (None, None)


def test_parse_inet_table_skips_inodeless_rows():
    rows = list(procfs.parse_inet_table(TCP, "tcp"))
    assert [(r.state, r.rx_queue, r.inode) for r in rows] == [("LISTEN", 6, 4711),
                                                             ("CLOSE_WAIT", 1, 4712)]
    assert rows[0].local == ("127.0.0.1", 8080)
    assert rows[1].remote == ("127.0.0.1", 0xD431)


def test_parse_inet6_address():
    line = ("  sl  local_address                         remote_address                        st\n"
            "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 "
            "0A 00000000:00000000 00:00000000 00000000     0        0 99 1\n")
    (row,) = procfs.parse_inet_table(line, "tcp6")
    assert row.local == ("::1", 8080)


def test_cgroup_and_mountinfo():
    lines = procfs.parse_cgroup("8:pids:/a/b\n4:memory:/x\n0::/\n")
    assert lines[0] == procfs.CgroupLine(8, ("pids",), "/a/b")
    assert lines[2].hierarchy == 0 and lines[2].controllers == ()
    mounts = procfs.parse_mountinfo(
        "35 25 0:30 / /sys/fs/cgroup/pids rw,relatime shared:15 - cgroup cgroup rw,pids\n"
        "36 25 0:31 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n")
    assert mounts[0].mount_point == "/sys/fs/cgroup/pids" and mounts[0].fstype == "cgroup"
    assert "pids" in mounts[0].super_options.split(",")
    assert mounts[1].mount_point == "/mnt/with space"


def test_fd_link_kind():
    assert procfs.fd_link_kind("socket:[123]") == ("socket", 123)
    assert procfs.fd_link_kind("pipe:[9]") == ("pipe", 9)
    assert procfs.fd_link_kind("anon_inode:[eventpoll]") == ("epoll", None)
    assert procfs.fd_link_kind("anon_inode:inotify") == ("inotify", None)
    assert procfs.fd_link_kind("anon_inode:[pidfd]") == ("pidfd", None)
    assert procfs.fd_link_kind("/etc/passwd") == ("path", None)


def test_fdinfo_flags_are_octal_and_described():
    info = procfs.parse_fdinfo("pos:\t42\nflags:\t02102001\nmnt_id:\t24\nino:\t3\n")
    assert info == procfs.FdInfo(pos=42, flags=0o2102001, mnt_id=24)
    # O_WRONLY | O_APPEND | O_CLOEXEC, with O_LARGEFILE (0100000) left unsaid
    assert procfs.describe_open_flags(info.flags) == "w, append, cloexec"
    assert procfs.describe_open_flags(0o100000) == "r"
    assert procfs.describe_open_flags(0o4002) == "rw, nonblock"
    assert procfs.describe_open_flags(0o12000000) == "path-only, cloexec"
    assert procfs.parse_fdinfo("garbage") == procfs.FdInfo(None, None, None)


UNIX = """Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 1002
0000000000000000: 00000002 00000000 00000000 0002 01 1003 @abstract name
"""


def test_unix_table_rows():
    rows = list(procfs.parse_unix_table(UNIX))
    assert rows == [
        UnixSocketRow(1001, "stream", "LISTEN", "/run/app.sock"),
        UnixSocketRow(1002, "stream", "CONNECTED", None),
        UnixSocketRow(1003, "dgram", "UNCONNECTED", "@abstract name"),
    ]
    assert procfs.parse_unix_inodes(UNIX) == {1001, 1002, 1003}


def test_children_and_last_pid():
    assert procfs.parse_children("12 345 \n") == [12, 345]
    assert procfs.parse_children("") == []
    assert procfs.parse_loadavg_last_pid("0.20 0.18 0.12 1/80 11206\n") == 11206
    assert procfs.parse_loadavg_last_pid("") is None


def test_exit_status_names_signals_as_trace_does():
    """One signal_name for exit statuses and traces: a real-time signal is
    SIGRTMIN+N in both."""
    from reaper_doctor.model.signals import signal_name

    rt = int(signal.SIGRTMIN) + 1
    assert procfs.decode_wait_status(rt).describe() == "SIGRTMIN+1" == signal_name(rt)
    assert procfs.decode_wait_status(9 | 0x80).describe() == "SIGKILL (core)"
