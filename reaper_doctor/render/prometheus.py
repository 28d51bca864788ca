"""`scan --format prometheus`: the text exposition format, for node_exporter's
textfile collector (`--textfile PATH`) or any scraper.

Conventions (prometheus.io/docs/practices/naming): base units (seconds),
`_total` only on counters, HELP and TYPE before each family's samples, one
family's samples together. The standard client_python names are reused for
what they mean (`process_open_fds`, `process_max_fds`), with a `pid` label
since one file describes many processes; everything else is prefixed
`reaper_doctor_`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog import CODES
from ..model import PidsCgroup, Report, Snapshot
from .common import zombie_groups

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Family:
    name: str
    kind: str          # "gauge" | "counter"
    help: str
    samples: dict[Labels, float] = field(default_factory=dict)


class _Registry:
    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}

    def family(self, name: str, kind: str, help_text: str) -> _Family:
        if name not in self.families:
            self.families[name] = _Family(name, kind, help_text)
        return self.families[name]

    def set(self, name: str, kind: str, help_text: str, value: float | int | None,
            **labels: object) -> None:
        fam = self.family(name, kind, help_text)
        if value is None:
            return
        key = tuple((k, str(v)) for k, v in labels.items())
        fam.samples.setdefault(key, float(value))  # first sighting wins (trees may overlap)

    def render(self) -> str:
        out = []
        for fam in self.families.values():
            sample_name = fam.name + ("_total" if fam.kind == "counter" else "")
            out.append(f"# HELP {sample_name} {_escape_help(fam.help)}")
            out.append(f"# TYPE {sample_name} {fam.kind}")
            for labels, value in fam.samples.items():
                text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
                out.append(f"{sample_name}{{{text}}} {_number(value)}" if text
                           else f"{sample_name} {_number(value)}")
        return "\n".join(out) + "\n"


def escape_label(value: str) -> str:
    """Label values escape backslash, double quote and line feed (exposition format)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


OPEN_FDS = ("process_open_fds", "gauge", "Number of open file descriptors.")
MAX_FDS = ("process_max_fds", "gauge",
           "Maximum number of open file descriptors (the soft RLIMIT_NOFILE, ulimit -n).")
ZOMBIES = ("reaper_doctor_zombie_children", "gauge",
           "Zombie children of this parent process (exited, not yet waited for).")
CLOSE_WAIT = ("reaper_doctor_close_wait_sockets", "gauge",
              "TCP sockets of this process in CLOSE_WAIT: the peer closed, this side did not.")
UID_TASKS = ("reaper_doctor_uid_tasks", "gauge",
             "Tasks (threads and zombies count) of this real UID on the machine.")
UID_NPROC = ("reaper_doctor_uid_nproc_limit", "gauge",
             "Soft RLIMIT_NPROC (ulimit -u) for this UID's tasks; absent when unlimited.")
CG_CURRENT = ("reaper_doctor_pids_cgroup_current", "gauge",
              "Tasks in this pids cgroup (pids.current).")
CG_MAX = ("reaper_doctor_pids_cgroup_max", "gauge", "Task limit of this pids cgroup (pids.max).")
CG_REFUSALS = ("reaper_doctor_pids_cgroup_fork_refusals", "counter",
               "Forks refused because this pids cgroup was at pids.max (pids.events max).")
FINDINGS = ("reaper_doctor_findings", "gauge", "Findings of this scan by code and severity.")
FINDING = ("reaper_doctor_process_findings", "gauge",
           "Findings of this scan by process, code and severity.")
DURATION = ("reaper_doctor_scan_duration_seconds", "gauge", "Wall time of the scan.")
TASKS = ("reaper_doctor_machine_tasks", "gauge", "Tasks on the machine (each holds a PID).")
PID_MAX = ("reaper_doctor_machine_pid_max", "gauge", "kernel.pid_max.")
FILES = ("reaper_doctor_machine_open_files", "gauge",
         "Open file handles on the machine (fs.file-nr allocated minus unused).")
FILE_MAX = ("reaper_doctor_machine_file_max", "gauge", "fs.file-max.")


def render_prometheus(report: Report) -> str:
    reg = _Registry()
    for fam in (OPEN_FDS, MAX_FDS, ZOMBIES, CLOSE_WAIT):
        reg.family(*fam)
    comms: dict[int, str] = {}
    for t in report.targets:
        for pid, info in t.snapshot.processes.items():
            comms.setdefault(pid, info.name)
    machine = report.machine
    if machine:
        for row in machine.nofile_top:
            comms.setdefault(row.pid, row.name or "")
        for zp in machine.zombie_parents:
            comms.setdefault(zp.pid, zp.name or "")
    for t in report.targets:
        _snapshot_metrics(reg, t.snapshot, comms)
    if machine:
        for row in machine.nofile_top:
            reg.set(*OPEN_FDS, row.used, pid=row.pid, comm=comms.get(row.pid, ""))
            reg.set(*MAX_FDS, row.soft, pid=row.pid, comm=comms.get(row.pid, ""))
        for zp in machine.zombie_parents:
            reg.set(*ZOMBIES, zp.zombies, pid=zp.pid, comm=comms.get(zp.pid, ""))
        for u in machine.uids:
            reg.set(*UID_TASKS, u.tasks, uid=u.uid)
            reg.set(*UID_NPROC, u.soft, uid=u.uid)
        for cg in machine.pids_cgroups:
            _cgroup_metrics(reg, cg)
        reg.set(*TASKS, machine.tasks)
        reg.set(*PID_MAX, machine.pid_max)
        reg.set(*FILES, machine.files_open)
        reg.set(*FILE_MAX, machine.file_max)
    counts: dict[tuple[str, str], int] = {}
    for t in report.targets:
        for f in t.findings:
            key = (f.code, f.severity.value)
            counts[key] = counts.get(key, 0) + 1
    seen_codes = {code for code, _ in counts}
    for code, meta in CODES.items():
        if code not in seen_codes:
            counts[(code, meta.severity)] = 0   # a zero per code: alerts need a series
    for (code, severity), n in sorted(counts.items()):
        reg.set(*FINDINGS, n, code=code, severity=severity)
    per_process: dict[tuple[int, str, str], int] = {}
    for t in report.targets:
        for f in t.findings:
            key = (f.pid, f.code, f.severity.value)
            per_process[key] = per_process.get(key, 0) + 1
    reg.family(*FINDING)
    for (pid, code, severity), n in sorted(per_process.items()):
        reg.set(*FINDING, n, pid=pid, comm=comms.get(pid, ""), code=code, severity=severity)
    if report.duration_s is not None:
        reg.set(*DURATION, round(report.duration_s, 6))
    return reg.render()


def _snapshot_metrics(reg: _Registry, snap: Snapshot, comms: dict[int, str]) -> None:
    for pid, usage in sorted(snap.nofile.items()):
        comm = comms.get(pid, "")
        reg.set(*OPEN_FDS, usage.used, pid=pid, comm=comm)
        reg.set(*MAX_FDS, usage.soft, pid=pid, comm=comm)
    for g in zombie_groups(snap):
        reg.set(*ZOMBIES, g.count, pid=g.ppid, comm=g.parent_name or comms.get(g.ppid, ""))
    for pid, fds in sorted(snap.fds.items()):
        reg.set(*CLOSE_WAIT, fds.close_wait, pid=pid, comm=comms.get(pid, ""))
    if snap.nproc and snap.nproc.uid is not None:
        reg.set(*UID_TASKS, snap.nproc.used, uid=snap.nproc.uid)
        reg.set(*UID_NPROC, snap.nproc.soft, uid=snap.nproc.uid)
    if snap.pids_cgroup and snap.pids_cgroup.max:
        _cgroup_metrics(reg, snap.pids_cgroup)
    if snap.pids_in_use is not None:
        reg.set(*TASKS, snap.pids_in_use)
    reg.set(*PID_MAX, snap.pid_max)


def _cgroup_metrics(reg: _Registry, cg: PidsCgroup) -> None:
    path = cg.path or ""
    reg.set(*CG_CURRENT, cg.current, cgroup=path)
    reg.set(*CG_MAX, cg.max, cgroup=path)
    reg.set(*CG_REFUSALS, cg.refusals, cgroup=path)


__all__ = ["render_prometheus", "escape_label"]
