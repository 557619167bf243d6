"""CPU seconds (user + system) of the processes a benchmark times, read around each transfer.

Throughput on a shared VM swings by tens of percent from run to run; the CPU
time a transfer costs swings much less, so the benchmark reports both.

- Our own process (the Python client, the sendfile() sender): getrusage(),
  microseconds, all threads.
- Programs we start and wait for (scp, the C++ client): getrusage() of the
  children, which counts a child once it has been waited for.
- Processes that run through the whole benchmark (our server, sshd and its
  session processes, the ssh master connection that does scp's encryption):
  /proc/PID/stat, in clock ticks (10 ms). That resolution is why figures
  for files much smaller than 64 MiB are not reported (`MIN_CPU_SIZE`).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")
# Below this size a transfer costs a few clock ticks of /proc's CPU time: too coarse to report.
MIN_CPU_SIZE = 32 * 1024 * 1024


def own_cpu_seconds() -> float:
    """User + system CPU of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """User + system CPU of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return None
    return text.rpartition(")")[2].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process: all its threads, and its children it has waited for.

    0.0 for a process that is gone.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # Fields 14-17 of proc(5) (utime, stime, cutime, cstime); the list starts at field 3.
    return sum(int(value) for value in fields[11:15]) * CLOCK_TICK


def tree_cpu_seconds(root: int) -> float:
    """process_cpu_seconds of `root` and of all its descendants alive now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(process_cpu_seconds(pid) for pid in tree)
