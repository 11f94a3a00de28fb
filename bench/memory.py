"""Per-worker memory against the template's size: what a worker forked from a big template costs.

    .venv/bin/python bench/memory.py

For each size S (0, 64, 256, 1024 MiB) a template is made with S MiB of data touched (a
``bytes`` object, so every page is really there), 4 RPC workers are forked from it, each
answers one call, and each worker's memory is read from ``/proc/<pid>/smaps_rollup``: RSS (what
``top`` shows, shared pages included), PSS (its fair share) and USS (Private_Clean +
Private_Dirty: what the worker alone costs, what is freed when it exits).  A row shows the
median over the workers.  Results go to stdout and bench/results/memory.txt.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import anyfork

HERE = Path(__file__).resolve().parent
SIZES_MIB = (0, 64, 256, 1024)
WORKERS = 4


def smaps(pid: int) -> dict[str, int]:
    """The fields of /proc/<pid>/smaps_rollup, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def measure(size_mib: int) -> tuple[float, float, float, float]:
    """(template RSS, worker RSS, PSS, USS) in MiB, medians over the workers."""
    template = anyfork.new().eval(f"BALLAST = bytes(range(256)) * ({size_mib} << 12)")
    clients: list[anyfork.BlockingClient] = []
    try:
        clients.extend(
            template.fork().rpc_blocking("os:getpid", timeout=120) for _ in range(WORKERS)
        )
        pids = [client() for client in clients]
        template_pid = template.wait_started_blocking(timeout=120)
        rows = [smaps(pid) for pid in pids]
        t_rss = smaps(template_pid)["Rss"] / 1024
    finally:
        for client in clients:
            client.close()
        template.close()
    rss = statistics.median(r["Rss"] for r in rows) / 1024
    pss = statistics.median(r["Pss"] for r in rows) / 1024
    uss = statistics.median(r["Private_Clean"] + r["Private_Dirty"] for r in rows) / 1024
    return t_rss, rss, pss, uss


def main() -> None:
    lines = [
        "per-worker memory against the template's size",
        f"date         {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"machine      {os.cpu_count()} CPUs, {platform.machine()}; Linux {platform.release()}",
        f"python       {platform.python_version()}",
        f"method       {WORKERS} RPC workers per template, each after one call; median MiB",
        "",
        f"{'ballast MiB':>12}{'template RSS':>14}{'worker RSS':>12}{'PSS':>10}{'USS':>10}",
        "-" * 58,
    ]
    for size in SIZES_MIB:
        t_rss, rss, pss, uss = measure(size)
        lines.append(f"{size:12d}{t_rss:14.1f}{rss:12.1f}{pss:10.1f}{uss:10.2f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = HERE / "results" / "memory.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
