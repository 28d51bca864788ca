"""What the speed work must not break: sock_diag agrees with /proc/net/tcp,
and the cheap commands stay cheap to start."""

from __future__ import annotations

import socket
import subprocess
import sys

from reaper_doctor import collect, netlink, procfs


def test_sock_diag_rows_match_proc_net_tcp():
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    accepted, _ = srv.accept()
    client.close()                      # `accepted` goes to CLOSE_WAIT
    waiting = socket.create_connection(srv.getsockname())  # stays in the accept queue
    try:
        unaccepted: dict = {}
        rows = collect._tcp_by_sock_diag(unaccepted)
        assert rows is not None, "sock_diag unavailable"
        table = collect._SocketRows()
        table.diag = rows
        wanted = {s.getsockname(): s for s in (srv, accepted)}
        proc = {r.inode: r for r in procfs.parse_inet_table(collect.read_text("/proc/net/tcp"), "tcp")}
        checked = 0
        for inode, ref in proc.items():
            if ref.local in wanted and inode in table:
                assert table[inode] == ref
                checked += 1
        assert checked >= 2
        states = {table[i].state for i in proc if proc[i].local in wanted and i in table}
        assert {"LISTEN", "CLOSE_WAIT"} <= states
        # The queued connection owns no file (inode 0): both sources list its peer.
        port = srv.getsockname()[1]
        from_proc = procfs.parse_unaccepted(collect.read_text("/proc/net/tcp"))
        assert waiting.getsockname() in unaccepted[port]
        assert unaccepted[port] == from_proc[port]
    finally:
        for s in (srv, accepted, waiting):
            s.close()


def test_inet_diag_error_message_raises():
    import struct

    msg = struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -13) + b"\0" * 16
    try:
        netlink.index_replies(msg, {})
    except OSError as e:
        assert e.errno == 13
    else:
        raise AssertionError("no OSError")


CHECK = """
import sys
from reaper_doctor.cli import main
try:
    main([{arg!r}])
except SystemExit:
    pass
heavy = sorted(m for m in ("psutil", "tabulate", "json", "socket") if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
"""


def test_version_and_help_import_neither_psutil_nor_tabulate():
    for arg in ("--version", "--help"):
        result = subprocess.run([sys.executable, "-c", CHECK.format(arg=arg)],
                                capture_output=True, text=True, timeout=60)
        line = [x for x in result.stderr.splitlines() if x.startswith("HEAVY")]
        assert line == ["HEAVY []"], result.stderr
