"""sock_diag agrees with /proc/net/tcp (one walk or one dump per family),
and the cheap commands stay cheap to start."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from helpers import wait_until

from reaper_doctor.collect import proc as proc_files
from reaper_doctor.collect import sockets
from reaper_doctor.parse import netlink, procfs


@pytest.mark.parametrize("family, host, table_name", [
    (socket.AF_INET, "127.0.0.1", "tcp"),
    # 127.0.0.1 through an IPv6 socket: the tcp6 table and IPv6 decoding
    (socket.AF_INET6, "::ffff:127.0.0.1", "tcp6"),
])
def test_sock_diag_rows_match_proc_net_tcp(family, host, table_name):
    srv = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind((host, 0))
    srv.listen()
    port = srv.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = srv.accept()
    client.close()                      # `accepted` goes to CLOSE_WAIT
    waiting = socket.create_connection(("127.0.0.1", port))  # stays in the accept queue
    try:
        unaccepted: dict = {}
        rows = sockets._tcp_by_sock_diag(unaccepted)
        assert rows is not None, "sock_diag unavailable"
        table = sockets._SocketRows()
        table.dump, table.diag = rows
        text = proc_files.read_text(f"/proc/net/{table_name}")
        proc = {r.inode: r for r in procfs.parse_inet_table(text, table_name)}
        checked = 0
        for inode, ref in proc.items():   # by port: IPv6 tables write 127.0.0.1 as ::ffff:7f00:1
            if port in (ref.local[1], ref.remote[1]) and inode in table:
                assert table[inode] == ref
                checked += 1
        assert checked >= 2
        states = {table[i].state for i in proc if proc[i].local[1] == port and i in table}
        assert {"LISTEN", "CLOSE_WAIT"} <= states
        # The queued connection owns no file (inode 0): both sources list its peer.
        from_proc = procfs.parse_unaccepted(text)
        assert waiting.getsockname()[1] in {peer_port for _, peer_port in unaccepted[port]}
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


def test_one_walk_dump_matches_one_dump_per_family():
    """The older any-family request gives the rows the per-family requests
    give, and FILE_STATES leaves TIME_WAIT out (never held by a descriptor)."""
    import os

    v4 = socket.create_server(("127.0.0.1", 0))
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    v6.bind(("::ffff:127.0.0.1", 0))
    v6.listen()
    client = socket.create_connection(("127.0.0.1", v6.getsockname()[1]))
    accepted, _ = v6.accept()
    closer = socket.create_connection(v4.getsockname())
    closed, _ = v4.accept()
    closer.close()          # the active closer ends in TIME_WAIT once the peer closes too
    closed.close()
    ours = {os.fstat(s.fileno()).st_ino for s in (v4, v6, client, accepted)}
    time_wait = netlink.TCP_TIME_WAIT

    def dump(*requests: bytes) -> tuple[bytes, dict[int, int]]:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_SOCK_DIAG) as nl:
            return sockets._dump_tcp(nl, list(requests), {})

    try:
        wait_until(lambda: any(r.state == time_wait for r in netlink.parse_replies(
            dump(netlink.any_family_dump_request(netlink.ALL_STATES))[0])[0]), what="a TIME_WAIT")
        one = dump(netlink.any_family_dump_request(netlink.FILE_STATES))
        per_family = dump(*(netlink.dump_request(f, netlink.FILE_STATES)
                            for f in (socket.AF_INET, socket.AF_INET6)))
        assert not any(r.state == time_wait for r in netlink.parse_replies(one[0])[0])
        rows = []
        for dump, offsets in (one, per_family):
            table = sockets._SocketRows()
            table.dump, table.diag = dump, offsets
            assert ours <= set(offsets)
            rows.append({i: table[i] for i in ours})
        assert rows[0] == rows[1]
        assert {r.proto for r in rows[0].values()} == {"tcp", "tcp6"}
    finally:
        for s in (v4, v6, client, accepted):
            s.close()


def _diag_message(inode: int, state: int = 1, port: int = 8000, attrs: int = 8) -> bytes:
    """One sock_diag reply as the kernel lays it out: header, inet_diag_msg,
    then `attrs` bytes of attributes (their size sets the message length)."""
    import struct

    body = struct.pack("=BBxx", socket.AF_INET, state) + struct.pack(">HH", port, 40000)
    body += socket.inet_aton("127.0.0.1") + b"\0" * 12 + socket.inet_aton("127.0.0.2") + b"\0" * 12
    body += b"\0" * 12 + struct.pack("=IIIII", 0, 0, 0, 0, inode) + b"\0" * attrs
    return struct.pack("=IHHII", 16 + len(body), netlink.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_index_replies_finds_every_message_of_a_buffer():
    import struct

    messages = [_diag_message(100 + i) for i in range(50)]          # a run of one size
    messages.append(_diag_message(0, state=1, port=8080))          # queued: owns no file
    messages += [_diag_message(200 + i) for i in range(3)]
    messages.append(_diag_message(300, attrs=36))                  # a LISTEN-sized one
    messages += [_diag_message(400 + i) for i in range(20)]
    done = struct.pack("=IHHII", 20, netlink.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    data = b"".join(messages) + done
    into: dict[int, int] = {}
    queued: dict = {}
    assert netlink.index_replies(data, into, queued) is True
    expected, off = {}, 0
    for m in messages:
        inode = struct.unpack_from("=I", m, 16 + 68)[0]
        if inode:
            expected[inode] = off + 16
        off += len(m)
    assert into == expected
    assert queued == {8080: {("127.0.0.2", 40000)}}
    # Each indexed offset decodes to its own row.
    row = netlink.socket_row(data, into[300])
    assert row.inode == 300 and row.local == ("127.0.0.1", 8000)


CHECK = """
import sys
from reaper_doctor.cli import main
try:
    main([{arg!r}])
except SystemExit:
    pass
heavy = sorted(m for m in ("psutil", "tabulate", "json", "socket", "prometheus_client")
               if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
"""


def test_version_and_help_import_neither_psutil_nor_tabulate():
    for arg in ("--version", "--help"):
        result = subprocess.run([sys.executable, "-c", CHECK.format(arg=arg)],
                                capture_output=True, text=True, timeout=60)
        line = [x for x in result.stderr.splitlines() if x.startswith("HEAVY")]
        assert line == ["HEAVY []"], result.stderr
