"""joblib: the ``"anyfork"`` backend next to joblib's default (loky), 8 workers.

    .venv/bin/python bench/joblib_bench.py            # 3 rounds, about a minute
    .venv/bin/python bench/joblib_bench.py --quick    # 1 round, fewer tasks

Each round runs each backend in a fresh interpreter (so that loky's reusable executor and
anyfork's joblib template start cold), which measures, in order:

* **first call**: ``Parallel(n_jobs=8)`` over 8 trivial tasks, from a program that has imported
  joblib and nothing else has happened yet: starting the workers (anyfork: the template too,
  with joblib imported in it) until the results are back;
* **steady state**: then, with the workers warm, a ``Parallel`` call over ``TASKS`` trivial
  tasks (joblib's auto-batching), as tasks per second; and ``Parallel`` calls per second over 8
  tasks each (``with Parallel(...) as p`` reuses the workers for anyfork, as loky's reusable
  executor does).

A row shows the median of the rounds.  Results go to stdout and bench/results/joblib.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = 20_000
CALLS = 50


def child(backend: str, tasks: int, calls: int) -> None:
    """One round for one backend, in this (fresh) interpreter; prints a JSON line."""
    import operator

    import joblib
    from joblib import Parallel, delayed

    if backend == "anyfork":
        import anyfork.joblib  # noqa: F401  # registers the backend

    t0 = time.perf_counter()
    with joblib.parallel_config(backend=backend, n_jobs=8):
        Parallel()(delayed(operator.neg)(i) for i in range(8))
    first = time.perf_counter() - t0
    with joblib.parallel_config(backend=backend, n_jobs=8), Parallel() as parallel:
        parallel(delayed(operator.neg)(i) for i in range(tasks))  # warm-up, batch sizes found
        t0 = time.perf_counter()
        out = parallel(delayed(operator.neg)(i) for i in range(tasks))
        rate = tasks / (time.perf_counter() - t0)
        assert out[-1] == -(tasks - 1)
        t0 = time.perf_counter()
        for _ in range(calls):
            parallel(delayed(operator.neg)(i) for i in range(8))
        call_rate = calls / (time.perf_counter() - t0)
    print(json.dumps({"first": first, "tasks_per_s": rate, "calls_per_s": call_rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer tasks")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "joblib.txt")
    args = parser.parse_args()
    tasks, calls, rounds = (2_000, 10, 1) if args.quick else (TASKS, CALLS, 3)
    if args.child:
        child(args.child, tasks, calls)
        return
    samples: dict[str, list[dict[str, float]]] = {"anyfork": [], "loky": []}
    for _ in range(rounds):
        for backend in samples:  # interleaved, so drift hits both alike
            out = subprocess.run(
                [sys.executable, __file__, "--child", backend, *(["--quick"] * args.quick)],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
            samples[backend].append(json.loads(out.stdout.splitlines()[-1]))
    import joblib

    lines = [
        "joblib backends, 8 workers",
        f"date         {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"machine      {os.cpu_count()} CPUs, {platform.machine()}; Linux {platform.release()}",
        f"python       {platform.python_version()}, joblib {joblib.__version__}",
        f"method       {rounds} round(s), each backend in a fresh interpreter; median of rounds;"
        f" {tasks:,} trivial tasks (operator.neg), {calls} Parallel calls of 8 tasks",
        "",
        f"{'backend':12}{'first call ms':>15}{'tasks/s':>12}{'Parallel calls/s':>18}",
        "-" * 57,
    ]
    for backend, rows in samples.items():
        first = statistics.median(r["first"] for r in rows) * 1000
        rate = statistics.median(r["tasks_per_s"] for r in rows)
        call_rate = statistics.median(r["calls_per_s"] for r in rows)
        lines.append(f"{backend:12}{first:15.1f}{rate:12.0f}{call_rate:18.1f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
