"""The finding codes: slug, default severity, a one-line summary, and the
teaching text `reaper-doctor explain CODE` prints.

The codes, slugs and severities are a public contract (docs/findings.md): never
renumber, never reuse.
"""

from __future__ import annotations

from typing import NamedTuple


class Code(NamedTuple):
    code: str          # "RD101"
    slug: str          # "zombie-leak"
    severity: str      # default severity: "info" | "warning" | "error"
    summary: str       # one line, for tables and `explain` with no code


CODES: dict[str, Code] = {
    c.code: c
    for c in (
        Code("RD101", "zombie-leak", "error",
             "zombies persist under a parent that never calls waitpid (SIGCHLD default)"),
        Code("RD102", "lost-sigchld", "error",
             "zombies persist under a parent that catches SIGCHLD but reaps one child per signal"),
        Code("RD103", "sigchld-blocked", "error",
             "zombies persist and SIGCHLD is blocked in the parent"),
        Code("RD104", "init-not-reaping", "error",
             "zombies persist under PID 1 of a container's PID namespace: no init reaps orphans"),
        Code("RD105", "pid1-ignores-sigterm", "warning",
             "PID 1 of a container's PID namespace has no SIGTERM handler: a stop waits, "
             "then kills"),
        Code("RD201", "close-wait-leak", "error",
             "accepted sockets held in CLOSE_WAIT: the peer closed, the server never did"),
        Code("RD202", "inherited-listener", "info",
             "per-connection children hold a copy of the listening socket they never use"),
        Code("RD203", "fd-growth", "warning",
             "open descriptors grow steadily"),
        Code("RD301", "nofile-limit", "warning",
             "open descriptors near the soft RLIMIT_NOFILE (ulimit -n)"),
        Code("RD302", "nproc-limit", "warning",
             "tasks of the user near the soft RLIMIT_NPROC (ulimit -u)"),
        Code("RD303", "pids-cgroup-limit", "warning",
             "tasks of the pids cgroup near pids.max"),
        Code("RD401", "accept-backlog", "warning",
             "a listening socket's accept queue stays non-empty: the server is not accepting"),
    )
}

# Teaching texts for `reaper-doctor explain CODE`, keyed by code. Each says
# what the finding means, how reaper-doctor detects it, the buggy code, the
# fixed code, and how to confirm the fix.
EXPLAIN: dict[str, str] = {
    "RD101": """\
RD101 zombie-leak (error): zombies persist under a parent that never waits.

What it means
  A child that exits stays a zombie (<defunct>, state Z) until its parent
  collects its exit status with wait()/waitpid(). A zombie holds no memory
  or descriptors, but keeps its PID and counts against RLIMIT_NPROC (non-
  root users) and the pids cgroup: a busy fork-per-connection server ends
  with fork() failing with EAGAIN (BlockingIOError). Only the parent can
  reap them; init or a subreaper gets them only once the parent has died.

How reaper-doctor detects it
  The same PID is seen as a zombie in two samples at least --grace seconds
  apart (default 1 s), and the parent's SIGCHLD disposition is default
  (/proc/PID/status: bit 16 clear in SigCgt, SigIgn and every thread's
  SigBlk). Short-lived zombies of a healthy server are not reported.

Buggy code
    if os.fork() == 0:
        handle(client_connection); os._exit(0)
    client_connection.close()       # ...but nobody ever calls waitpid()

Fixed code
    def reap_children(signum, frame):
        while True:                 # one SIGCHLD may stand for many exits
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return              # no children at all
            if pid == 0:
                return              # children left, none exited yet
    signal.signal(signal.SIGCHLD, reap_children)

  (No exit statuses needed? signal.signal(SIGCHLD, SIG_IGN) auto-reaps.)
  Since Python 3.5 (PEP 475) accept() is retried after the handler runs:
  the old `except EINTR: continue` around it is obsolete.

Confirm the fix
  reaper-doctor scan PID       (no RD101; zombies 0 or short-lived)
  reaper-doctor scenario run zombie-leak   /  scenario run fixed-fork
""",
    "RD102": """\
RD102 lost-sigchld (error): the SIGCHLD handler reaps fewer children than exited.

What it means
  The parent catches SIGCHLD and calls wait() once per handler call. But
  standard signals are not queued (UNP 5.9-5.10, TLPI 26.3): while one
  SIGCHLD is pending, more are merged into it, and CPython merges again
  (one "tripped" flag until the Python handler runs). When children exit
  together the handler runs fewer times than children exited; each lost
  signal leaves a zombie until a later signal happens to reap it.

How reaper-doctor detects it
  The same PID is seen as a zombie in two samples at least --grace seconds
  apart (default 1 s) while the parent catches SIGCHLD (bit 16 of SigCgt in
  /proc/PID/status). A zombie count that keeps rising while the parent
  catches SIGCHLD is RD102 as well. `reaper-doctor lesson coalescing`
  measures the loss, `reaper-doctor trace PID` counts merged signals.

Buggy code
    def grim_reaper(signum, frame):
        pid, status = os.wait()     # one child per signal
    signal.signal(signal.SIGCHLD, grim_reaper)

Fixed code
    def grim_reaper(signum, frame):
        while True:                 # reap until none is left
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

  Also lossless: SIG_IGN for SIGCHLD (no exit statuses), or one
  os.pidfd_open per child + selectors + os.waitid(P_PIDFD) (Linux 5.4+).

Confirm the fix
  reaper-doctor scan PID        (under bursty load: no RD102)
  reaper-doctor scenario run lost-sigchld  /  scenario run fixed-fork
""",
    "RD103": """\
RD103 sigchld-blocked (error): zombies persist and SIGCHLD is blocked.

What it means
  A thread of the parent blocks SIGCHLD (sigprocmask/pthread_sigmask) and
  nobody waits for the children, so their zombies stay. The signal is kept
  pending instead of running the handler. Common causes: a library or a
  thread that blocks signals and never unblocks them, a child process that
  inherited a blocked mask across fork()/exec(), or code meant to wait with
  sigwait()/sigtimedwait() that never gets to it.

How reaper-doctor detects it
  The same PID is seen as a zombie in two samples at least --grace seconds
  apart, and bit 16 (SIGCHLD) is set in SigBlk of the parent, read per
  thread from /proc/PID/task/TID/status (the mask is per thread). SIGCHLD
  stuck in ShdPnd supports it. Init-like reapers (tini, systemd) block
  SIGCHLD on purpose and wait in sigtimedwait(); their zombies do not
  persist, so they get no RD103.

Buggy code
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    ...                             # fork children; nothing ever waits

Fixed code
    # Either unblock it and reap in a handler with a waitpid(WNOHANG) loop,
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    # or keep it blocked and wait for it, reaping all each time:
    while running:
        if signal.sigtimedwait({signal.SIGCHLD}, 1.0):
            reap_all()              # the os.waitpid(-1, os.WNOHANG) loop

Confirm the fix
  grep SigBlk /proc/PID/task/*/status   (bit 0x10000 clear, or zombies gone)
  reaper-doctor scan PID                (no RD103)
""",
    "RD104": """\
RD104 init-not-reaping (error): zombies persist under PID 1 of a container.

What it means
  In a container the application often runs as PID 1 of its own PID
  namespace (`CMD ["node", "server.js"]`, `python app.py`, a `sh -c`
  wrapper). PID 1 has two duties the application does not know about;
  this is the first: every orphan of the namespace is re-parented to it.
  A helper started in the background (`cmd &`, a double fork, a
  subprocess whose parent died) ends as a zombie of PID 1, and the
  application only ever waits for the children it started itself. The
  zombies pile up until the container's pids limit refuses fork().

How reaper-doctor detects it
  The parent of zombies that persist (the same PID, at least 3 s apart:
  inits may reap in batches) is PID 1 of a PID namespace below the
  host's: /proc/PID/status NSpid ends in 1. The container comes from
  /proc/PID/cgroup (docker, podman, containerd, CRI-O, Kubernetes,
  systemd-nspawn, LXC). RD104 replaces RD101/RD102/RD103 for that parent:
  the fix is not in its SIGCHLD handling.

Buggy code
    CMD ["python", "server.py"]         # server.py is PID 1
    # server.py: subprocess.run("notify.sh &", shell=True) per request

Fixed code: an init as PID 1 that reaps and forwards signals
    docker run --init IMAGE              podman run --init IMAGE
    Compose:     services: {app: {init: true}}
    Dockerfile:  ENTRYPOINT ["tini", "--"]    (or dumb-init)
    Kubernetes:  shareProcessNamespace: true (the pause container becomes
                 PID 1 and reaps), or tini as the container's command.
  Or make the program reap: loop os.waitpid(-1, os.WNOHANG) on SIGCHLD.
  Every orphan of the container comes to it, not only its own children.

Confirm the fix
  reaper-doctor scan PID     ("PID 1 of its PID namespace"; no RD104)
  reaper-doctor scan         (Containers: the init column names tini)
  reaper-doctor scenario run container-init  /  container-init-fixed
""",
    "RD105": """\
RD105 pid1-ignores-sigterm (warning): PID 1 of a container drops SIGTERM.

What it means
  PID 1's second duty: signals. The kernel delivers to PID 1 of a
  namespace, from outside, only the signals it has a handler for (and
  SIGKILL): a SIGTERM it does not catch is silently dropped. `docker
  stop`, `podman stop` and `kubectl delete pod` send SIGTERM, wait their
  grace period (10 s, 10 s, 30 s) for nothing, then SIGKILL: slow
  deploys, and no clean shutdown (connections cut, files half written).

How reaper-doctor detects it
  PID 1 of a PID namespace below the host's (NSpid ends in 1) has
  SIGTERM neither in SigCgt (a handler) nor in SigBlk (blocked, to be
  taken from a signalfd: catatonit, systemd), and does not sleep in
  sigtimedwait (/proc/PID/wchan: tini, dumb-init; the waited signals
  leave SigBlk while they wait). Judged from the masks, not the name:
  an init may run under another name (podman-init).

Buggy code
    CMD ["sh", "-c", "exec python server.py"]   # no SIGTERM handler as PID 1
    CMD python server.py                        # shell form: sh is PID 1

Fixed code
    docker run --init IMAGE   /  podman run --init IMAGE  /  init: true
    ENTRYPOINT ["tini", "--"]       (tini forwards SIGTERM to the program)
  Or handle it in the program:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))

Confirm the fix
  grep -E 'SigCgt|SigBlk' /proc/PID/status   (bit 0x4000 set in one)
  time docker stop NAME                      (well under 10 s)
  reaper-doctor scan PID                     (no RD105)
""",
    "RD201": """\
RD201 close-wait-leak (error): accepted sockets held in CLOSE_WAIT.

What it means
  After fork() both the parent and the child hold the accepted socket. A
  TCP connection is only closed when its last descriptor is closed, so if
  the parent never closes its copy, the child's close() sends no FIN: a
  client that reads until EOF (a body without Content-Length) hangs. When
  the client gives up and closes, the parent's copy moves to CLOSE_WAIT and
  stays there for ever. Each request costs the parent one descriptor, until
  accept() fails with "[Errno 24] Too many open files" (see RD301).

How reaper-doctor detects it
  It maps the socket inodes in /proc/PID/fd to rows of /proc/net/tcp and
  tcp6 in state CLOSE_WAIT (08): accepted sockets whose peer closed and
  that this process never closed. Beware: if the child calls shutdown(),
  the leaked sockets end in TCP CLOSE and vanish from /proc/net/tcp, ss and
  psutil; they then show only as socket descriptors (count, RD203).

Buggy code
    if os.fork() == 0:
        listen_socket.close(); handle(client_connection); os._exit(0)
    connections.append(client_connection)   # parent keeps its copy open
  (Python closes a socket object when it is garbage-collected, so the leak
  needs a live reference: a list, a dict, a closure, a log.)

Fixed code
    if os.fork() == 0:
        ...
    client_connection.close()       # the parent's copy, right after fork()

Confirm the fix
  ss -tanp state close-wait     (no rows for the server)
  reaper-doctor scan PID        (no RD201; fds stay flat under load)
  reaper-doctor scenario run fd-leak  /  scenario run fixed-fork
""",
    "RD202": """\
RD202 inherited-listener (info): per-connection children hold the listener.

What it means
  A fork-per-connection child inherits every descriptor of the parent,
  the listening socket included. If it never closes it, the listener stays
  open as long as any child lives: the port cannot be re-bound after the
  parent exits or restarts (EADDRINUSE), the socket outlives a graceful
  shutdown, and each child pays for a descriptor it never uses. It is
  harmless for a short request, hence "info".

How reaper-doctor detects it
  A live child shares the inode of the parent's LISTEN socket and also
  holds an accepted connection of its own. Pre-fork servers (gunicorn,
  nginx, Apache prefork) give every worker the listener on purpose, to
  accept on it: a child holding the listener but no accepted connection is
  an idle pre-fork worker, which marks the pool as pre-fork, and pre-fork
  pools are never RD202.

Buggy code
    if os.fork() == 0:
        handle(client_connection)   # listen_socket still open here
        os._exit(0)

Fixed code
    if os.fork() == 0:
        listen_socket.close()       # the child never accepts
        handle(client_connection)
        os._exit(0)

Confirm the fix
  ls -l /proc/CHILD/fd          (no socket with the listener's inode)
  reaper-doctor scan PID        (no RD202 while requests are in flight)
""",
    "RD203": """\
RD203 fd-growth (warning): open descriptors grow steadily.

What it means
  The process opens descriptors (sockets, files, pipes) faster than it
  closes them. A healthy server's count goes up and down with its
  connections; a leak only goes up, until it hits the soft RLIMIT_NOFILE
  and open()/accept()/socket() fail with EMFILE ([Errno 24]).

How reaper-doctor detects it
  It counts /proc/PID/fd in successive samples. From `scan`, the count
  must rise in every interval over at least three samples within the grace
  window, by a meaningful amount; `watch` judges over its whole run. The
  finding gives the growth rate and the time left until the soft limit at
  that rate. The fds are broken down by kind (socket, file, pipe) to say
  what leaks. Sockets whose connection is fully closed are not listed in
  /proc/net/tcp: a growing count of such sockets is a leak RD201 cannot see.

Buggy code
    def log(line):
        f = open("/var/log/app.log", "a")   # never closed
        f.write(line)
    cache[key] = socket.create_connection(addr)   # never evicted

Fixed code
    def log(line):
        with open("/var/log/app.log", "a") as f:  # closed on every path
            f.write(line)

  Run the tests with `pytest --reaper-doctor` to catch the leaking test.

Confirm the fix
  reaper-doctor watch PID       (fds rate near 0 per minute, no ETA)
  python -X dev (or -W error::ResourceWarning) shows unclosed objects.
""",
    "RD301": """\
RD301 nofile-limit (warning at 80 %, error at 95 %): descriptors near ulimit -n.

What it means
  The process has nearly as many open descriptors as its soft
  RLIMIT_NOFILE allows. At the limit every call that makes a descriptor
  fails with EMFILE, "[Errno 24] Too many open files". For a server that
  is accept(): the connection is not dropped, it stays in the accept queue
  (RD401), and a naive accept loop spins on the error at full CPU.

How reaper-doctor detects it
  Open descriptors are counted from /proc/PID/fd and compared with the
  soft "Max open files" of /proc/PID/limits (readable by anyone; psutil's
  rlimit() needs the same uid or CAP_SYS_RESOURCE). warning at 80 %, error
  at 95 %. Usually a leak (RD201, RD203) is the cause; the limit is where
  it ends.

Buggy code
    try:
        conn, _ = srv.accept()
    except OSError:
        continue                    # EMFILE: spins at 100 % CPU
    connections.append(conn)        # the leak that got us here

Fixed code
    except OSError as e:
        log_once(e)                 # say it, once
        time.sleep(0.05)            # back off: the listener stays readable
    ...
    conn.close()                    # and fix the leak itself (RD201)

  Raising the limit (ulimit -n, LimitNOFILE=) only buys time if it grows.

Confirm the fix
  grep 'open files' /proc/PID/limits; ls /proc/PID/fd | wc -l
  reaper-doctor watch PID       (no fds growth, no ETA to nofile)
""",
    "RD302": """\
RD302 nproc-limit (warning at 80 %, error at 95 %): tasks near ulimit -u.

What it means
  RLIMIT_NPROC limits the tasks (processes and threads) of one real user
  id, machine-wide. Zombies count until they are reaped, so a zombie leak
  (RD101, RD102) ends here: fork() fails with EAGAIN (Python:
  BlockingIOError: [Errno 11] Resource temporarily unavailable) and
  Thread.start() with RuntimeError "can't start new thread"; bash prints
  "fork: retry: Resource temporarily unavailable".

How reaper-doctor detects it
  It sums the `Threads:` of every process whose real uid is the target's
  (zombies count 1 each) and compares with the target's soft "Max
  processes" from /proc/PID/limits. The kernel does not enforce the limit
  for root (uid 0), even with every capability dropped, so RD302 is never
  raised for uid 0; the report says the limit is not enforced.

Buggy code
    if os.fork() == 0:              # fork per connection, never waitpid:
        handle(conn); os._exit(0)   # every request leaves a zombie

Fixed code
    signal.signal(signal.SIGCHLD, reap_children)   # the WNOHANG loop (RD101)
    # and bound concurrency (a pool) instead of one process per request

  Reaping one zombie frees one task; raising ulimit -u only delays it.

Confirm the fix
  ps -L -U USER --no-headers | wc -l   (stable under load)
  reaper-doctor scan PID        (no RD302, no RD101)
""",
    "RD303": """\
RD303 pids-cgroup-limit (warning at 80 %, error at 95 %): tasks near pids.max.

What it means
  The pids controller of the process's cgroup caps the tasks (processes
  and threads, zombies included) in the cgroup: container runtimes and
  systemd (TasksMax=) set it. At the cap fork() and clone() fail with
  EAGAIN, for root too, unlike RLIMIT_NPROC.

How reaper-doctor detects it
  It finds the target's pids cgroup from /proc/PID/cgroup (the v1 line
  listing "pids", or the v2 "0::" line when pids is a v2 controller) and
  /proc/self/mountinfo, then compares pids.current with pids.max. A
  missing pids.max means the root cgroup: no cgroup limit (kernel.pid_max
  still applies). The `max N` line of pids.events counts forks the cgroup
  already refused: proof that EAGAIN came from here.

Buggy code
    # in a container with pids.max = 512:
    for request in requests:
        if os.fork() == 0:          # children never reaped (RD101),
            ...                     # or one live child per request, unbounded

Fixed code
    # reap every child (waitpid(-1, WNOHANG) loop) and bound concurrency:
    with concurrent.futures.ProcessPoolExecutor(max_workers=8) as pool:
        ...

  Raise pids.max (docker --pids-limit, TasksMax=) only once usage is flat.

Confirm the fix
  cat /sys/fs/cgroup/.../pids.current pids.events
  reaper-doctor scan PID        (no RD303)
""",
    "RD401": """\
RD401 accept-backlog (warning): the accept queue stays non-empty.

What it means
  The kernel completes TCP handshakes by itself and queues the connections
  on the listening socket until the server calls accept(). A queue that
  stays non-empty means the server is not accepting: an iterative server
  busy with one slow request, a blocked event loop, or accept() failing
  with EMFILE (RD301). The queue holds backlog + 1 connections; past that,
  SYNs are dropped and clients wait for retransmissions (1 s, 2 s, 4 s...).

How reaper-doctor detects it
  The LISTEN rows of /proc/net/tcp and tcp6 give the current queue length
  in rx_queue; it must stay above 0 across samples. The maximum (the
  backlog) comes from netlink sock_diag, as `ss -ltn` shows in Send-Q; a
  full queue plus a rising ListenOverflows in /proc/net/netstat confirms
  that connections are being dropped.

Buggy code
    srv.listen(5)
    while True:
        conn, _ = srv.accept()
        handle(conn); conn.close()  # slow: everyone else waits in the queue

Fixed code
    # serve each connection concurrently: fork with a waitpid loop
    # (scenarios/fixed_fork.py), threads, or non-blocking sockets:
    sel = selectors.DefaultSelector()
    srv.setblocking(False)
    sel.register(srv, selectors.EVENT_READ)   # see scenarios/event_loop.py

  A bigger backlog only hides the symptom for a while.

Confirm the fix
  ss -ltn 'sport = :PORT'       (Recv-Q 0 under load)
  reaper-doctor scenario run blocking  /  scenario run event-loop
""",
}


def lookup(code: str) -> Code | None:
    """The Code for "RD101", "rd101" or a slug such as "zombie-leak"; None if unknown."""
    key = code.strip().upper()
    if key in CODES:
        return CODES[key]
    for c in CODES.values():
        if c.slug == code.strip().lower():
            return c
    return None
