"""Where the CPU of one ``anyfork.new()`` goes: parent, default template, child.

    python -m bench.fork_cost [N]      (from the repository root)

Runs ``anyfork.new().run_blocking("socket:socket.close")`` (the bench's row compared with
Perl's ``->new->run(CORE::exit)``) N times in a row and reads, per process created, the CPU
time and minor page faults of this parent (``getrusage``), of the default template, and of its
reaped children (``/proc/<template>/stat``: the template reaps them, so their totals land in
its ``cutime``/``cstime``/``cminflt``).  On a 2-CPU machine the rate cannot exceed
2 / (the sum of the three CPU times); the page faults are mostly copy-on-write copies of pages
the interpreter writes after a fork (refcounts, allocator state), each costing microseconds.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from anyfork._core import _templates
from bench import _loops
from bench._loops import PRELOADED as FUNC
from bench._loops import anyfork_new_preloaded_once as once

TICK = os.sysconf("SC_CLK_TCK")


def template_stat() -> tuple[int, int, float, float]:
    """(minflt, cminflt, cpu s, children's cpu s) of the default template."""
    tmpl = _templates._default
    pid = tmpl.pid if tmpl is not None else None
    if pid is None:
        raise RuntimeError("no default template (anyfork.new() has not run?)")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    minflt, cminflt = int(fields[7]), int(fields[8])
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    children = (int(fields[13]) + int(fields[14])) / TICK
    return minflt, cminflt, cpu, children


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle (all CPUs, from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK  # minus idle and iowait


def busy_per_process(run: Callable[[], int]) -> tuple[float, float]:
    """(processes/s, machine CPU us per process) of ``run``, a loop that returns how many
    processes it made."""
    before, start = machine_busy(), time.perf_counter()
    count = run()
    busy, elapsed = machine_busy() - before, time.perf_counter() - start
    return count / elapsed, busy * 1e6 / count


def compare_perl(seconds: float = 3.0) -> None:
    """The same machine-wide CPU accounting for anyfork and for Perl's AnyEvent::Fork (whose
    template's children are not ours to read from /proc)."""
    script = str(Path(__file__).with_name("perl_fork.pl"))
    loops: list[tuple[str, Callable[[], int]]] = [
        ("anyfork.new()", lambda: _loops.timed(once, seconds).count),
        ("Perl AnyEvent::Fork->new", lambda: _loops.perl_run(script, "new", seconds).count),
    ]
    print("machine-wide busy CPU per process (all processes, kernel included; /proc/stat):")
    for name, loop in loops:
        try:
            rate, cost = busy_per_process(loop)
        except (OSError, subprocess.SubprocessError):
            print(f"  {name:<26} not available (bench/setup.py installs AnyEvent::Fork)")
            continue
        print(f"  {name:<26} {rate:7.0f}/s  {cost:6.0f} us CPU per process")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    for _ in range(100):  # warm-up: the template's exec, its first fork and preloads
        once()
    t0, r0 = template_stat(), resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(n):
        once()
    elapsed = time.perf_counter() - start
    t1, r1 = template_stat(), resource.getrusage(resource.RUSAGE_SELF)
    us = 1e6 / n
    parent_cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * us
    tmpl_cpu = (t1[2] - t0[2]) * us
    child_cpu = (t1[3] - t0[3]) * us
    total = parent_cpu + tmpl_cpu + child_cpu
    cpus = os.cpu_count() or 1
    print(f"anyfork.new().run_blocking({FUNC!r}) x {n}: {n / elapsed:.0f}/s")
    print(f"{'per process':<12} {'CPU us':>8} {'minor faults':>13}")
    print(f"{'parent':<12} {parent_cpu:8.0f} {(r1.ru_minflt - r0.ru_minflt) / n:13.1f}")
    print(f"{'template':<12} {tmpl_cpu:8.0f} {(t1[0] - t0[0]) / n:13.1f}")
    print(f"{'child':<12} {child_cpu:8.0f} {(t1[1] - t0[1]) / n:13.1f}")
    print(f"{'total':<12} {total:8.0f}")
    print(
        f"CPU-bound ceiling on {cpus} CPUs: {cpus * 1e6 / total:.0f}/s "
        f"(template and child CPU from /proc, in {1e3 / TICK:.0f} ms ticks)"
    )
    compare_perl()


if __name__ == "__main__":
    main()
