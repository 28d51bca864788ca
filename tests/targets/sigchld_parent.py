"""A test target: a parent of N children that all exit at once on request.

    python sigchld_parent.py MODE N

MODE is how the parent reaps: `once` (one os.wait() per SIGCHLD handler
call: the RD102 bug), `loop` (waitpid(-1, WNOHANG) until 0: the fix), or
`none` (no handler, never waits). The children block on a pipe. The parent
prints "ready", then obeys its stdin, one command a line:

    release   close the pipe: every child exits at once; prints "released"
    release K write K bytes to the pipe: K children exit at once (each
              reads one byte); prints "released K"
    burst K   the same with SIGCHLD blocked until all K are zombies: the
              kernel merges their signals into one, whatever the machine's
              load (a bare release, on a busy machine, may see its children
              exit one by one); prints "burst K"
    report    prints "runs R reaped Z" (handler runs, children reaped)
    exit      exits at once (os._exit), leaving its zombies to the subreaper
EOF at stdin ends it too.
"""

import os
import signal
import sys
import time

mode, n = sys.argv[1], int(sys.argv[2])
r, w = os.pipe()
for _ in range(n):
    if os.fork() == 0:
        try:
            os.close(w)
            os.read(r, 1)  # EOF when the parent closes the write end
        finally:
            os._exit(0)
os.close(r)
runs = reaped = 0


def wait_once(signum, frame):
    global runs, reaped
    runs += 1
    try:
        os.wait()
        reaped += 1
    except ChildProcessError:
        pass


def wait_loop(signum, frame):
    global runs, reaped
    runs += 1
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reaped += 1


def zombie_children():
    """How many of our children are zombies (/proc: the children of the
    main thread, which forked them all)."""
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        pids = f.read().split()
    count = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                count += f.read().rpartition(")")[2].split()[0] == "Z"
        except OSError:
            pass  # reaped meanwhile
    return count


if mode == "once":
    signal.signal(signal.SIGCHLD, wait_once)
elif mode == "loop":
    signal.signal(signal.SIGCHLD, wait_loop)
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "release":
        os.close(w)
        print("released", flush=True)
    elif cmd.startswith("burst "):
        k = int(cmd.split()[1])
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        before = zombie_children()
        os.write(w, b"x" * k)
        deadline = time.monotonic() + 30
        while zombie_children() < before + k and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        print(f"burst {k}", flush=True)
    elif cmd.startswith("release "):
        k = int(cmd.split()[1])
        os.write(w, b"x" * k)
        print(f"released {k}", flush=True)
    elif cmd == "report":
        print(f"runs {runs} reaped {reaped}", flush=True)
    elif cmd == "exit":
        os._exit(0)
