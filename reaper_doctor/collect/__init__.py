"""The only readers of the operating system: /proc (and psutil where there
is no /proc) into records.

Hot paths read /proc directly with os.open/os.read: psutil's children()
builds a Process object per child (3x a raw scan with 2,000 zombies),
its rlimit() fails on other users' processes without CAP_SYS_RESOURCE,
it has no signal masks, and net_connections() parses the whole socket
table once per process. Errors become data: a field we may not read is
recorded as Unreadable, a process that vanishes mid-read is dropped from
the sample.

  proc        the door: /proc's root, whole-file reads, parallel small reads
  tasks       the process table, a target's tree, children, new PIDs
  process     one process: stat, command line, SIGCHLD, limits
  own         this process, cheaply: descriptor count and keys, any child?
  fds         descriptors: classified, counted, described; a server's listeners
  sockets     socket tables (sock_diag, /proc/<pid>/net/*)
  cgroups     pids cgroups
  snapshot    one full sample of a target: a Snapshot
  machine     the whole machine, for the census
  watch       light samples for `watch`
  timeline    a server run's sampler
  psutil_fallback   a Snapshot where there is no /proc
"""
