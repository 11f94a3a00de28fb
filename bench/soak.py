"""``make soak``: anyfork under sustained load, with resources counted before and after.

Not part of ``make test`` (it takes minutes).  Three phases, each through one template or pool:

1. processes: ``tmpl.fork().run(f)`` through one template in bursts (``asyncio.gather``), each
   child writing one byte and exiting;
2. RPC: pipelined calls on one worker (``client.map(chunksize=1)``: a frame per call, so the
   per-call machinery is what runs), asyncio and blocking clients;
3. pool: calls through a ``Pool`` while a killer task SIGKILLs a random worker now and then; only
   the killed workers' calls may fail (``WorkerDiedError``), every other call must return.

Before and after (with the default template and everything else closed) it prints the parent's
open fds, threads, RSS, and the zombies among its descendants.  ``--scale`` shrinks every count
(``--scale 0.01`` is a one-minute smoke run).  Exit status 1 if a check fails: fds or threads not
back to where they started, a zombie, RSS growth of 20 MiB or more, a lost or wrong result.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anyfork

RSS_LIMIT = 20 << 20


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process we can see."""
    table: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), fields[0])
    return table


def zombies() -> int:
    """Zombies among our descendants (our children's, our templates' children's...)."""
    table = _proc_table()
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in table.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return sum(1 for pid in ours if table.get(pid, (0, ""))[1] == "Z")


def snapshot() -> dict[str, int]:
    gc.collect()
    return {
        "fds": fds(),
        "threads": threading.active_count(),
        "zombies": zombies(),
        "rss": rss(),
    }


async def processes(n: int, burst: int) -> None:
    tmpl = anyfork.new().require("_children")

    async def one() -> None:
        sock = await tmpl.fork().run("_children:hello", timeout=60)
        try:
            loop = asyncio.get_running_loop()
            data = await asyncio.wait_for(loop.sock_recv(sock, 1), 60)
            if data != b"x":
                raise AssertionError(f"a child sent {data!r}")
        finally:
            sock.close()

    done = 0
    started = time.monotonic()
    while done < n:
        k = min(burst, n - done)
        await asyncio.gather(*(one() for _ in range(k)))
        done += k
    took = time.monotonic() - started
    tmpl.close()
    print(
        f"  processes: {n} through one template in bursts of {burst}: {took:.1f} s "
        f"({n / took:.0f}/s)",
        flush=True,
    )


async def rpc_calls(n: int) -> None:
    batch = 10_000
    client = await anyfork.new().require("_children").rpc("_children:double", timeout=60)
    started = time.monotonic()
    done = 0
    while done < n // 2:
        k = min(batch, n // 2 - done)
        results = await asyncio.wait_for(client.map(range(done, done + k), chunksize=1), 60)
        if results != [2 * x for x in range(done, done + k)]:
            raise AssertionError("wrong RPC results")
        done += k
    await client.aclose(timeout=30)
    blocking = anyfork.new().require("_children").rpc_blocking("_children:double", timeout=60)
    with blocking:
        while done < n:
            k = min(batch, n - done)
            if blocking.map(range(done, done + k), chunksize=1, timeout=60) != [
                2 * x for x in range(done, done + k)
            ]:
                raise AssertionError("wrong blocking RPC results")
            done += k
    took = time.monotonic() - started
    print(
        f"  RPC: {n} calls (half asyncio, half blocking), one frame each, pipelined: {took:.1f} s "
        f"({n / took:.0f}/s)",
        flush=True,
    )


async def pool_calls(n: int, kill_every: int) -> None:
    tmpl = anyfork.new().require("_children")
    died = ok = 0
    kills = 0
    started = time.monotonic()
    rng = random.Random(1)
    async with anyfork.Pool(tmpl, "_children:double", max=4, idle=2, start=0) as pool:
        done = 0
        while done < n:
            k = min(1000, n - done)
            futs = [asyncio.ensure_future(pool(x)) for x in range(done, done + k)]
            if (done // 1000) % max(1, kill_every // 1000) == 0:
                pids = pool.worker_pids()
                if pids:
                    try:
                        os.kill(rng.choice(pids), 9)
                        kills += 1
                    except ProcessLookupError:
                        pass
            results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 120)
            for x, r in zip(range(done, done + k), results, strict=True):
                if isinstance(r, anyfork.WorkerDiedError):
                    died += 1
                elif r == 2 * x:
                    ok += 1
                else:
                    raise AssertionError(f"pool call {x} gave {r!r}")
            done += k
        stats = pool.statistics()
    tmpl.close()
    took = time.monotonic() - started
    print(
        f"  pool: {n} calls, {kills} workers killed ({stats.died} died, {stats.started} "
        f"started): {ok} ok, {died} failed with WorkerDiedError: {took:.1f} s ({n / took:.0f}/s)",
        flush=True,
    )
    if ok + died != n:
        raise AssertionError("pool calls lost")


def report(name: str, before: dict[str, int], after: dict[str, int]) -> list[str]:
    print(
        f"  {name:<10} fds {before['fds']} -> {after['fds']}, threads {before['threads']} -> "
        f"{after['threads']}, zombies {before['zombies']} -> {after['zombies']}, RSS "
        f"{before['rss'] / 2**20:.1f} -> {after['rss'] / 2**20:.1f} MiB",
        flush=True,
    )
    problems = []
    if after["fds"] > before["fds"]:
        problems.append(f"{name}: fds grew {before['fds']} -> {after['fds']}")
    if after["threads"] > before["threads"]:
        problems.append(f"{name}: threads grew {before['threads']} -> {after['threads']}")
    if after["zombies"]:
        problems.append(f"{name}: {after['zombies']} zombies")
    if after["rss"] - before["rss"] >= RSS_LIMIT:
        problems.append(f"{name}: RSS grew {(after['rss'] - before['rss']) / 2**20:.1f} MiB")
    return problems


def settle() -> None:
    """Let what the phase closed exit and be reaped (bounded polling for OS facts)."""
    deadline = time.monotonic() + 10
    while zombies() and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    parser.add_argument("--only", choices=("processes", "rpc", "pool"), action="append")
    args = parser.parse_args()
    s = args.scale
    phases: list[tuple[str, Callable[[], object]]] = [
        ("processes", lambda: processes(int(100_000 * s), 500)),
        ("rpc", lambda: rpc_calls(int(1_000_000 * s))),
        ("pool", lambda: pool_calls(int(200_000 * s), 2_000)),
    ]
    print(f"anyfork soak (scale {s}), {sys.executable} {sys.version.split()[0]}", flush=True)
    # Warm up once, so that the default template and first imports are in the baseline.
    asyncio.run(processes(10, 10))
    settle()
    first = snapshot()
    problems: list[str] = []
    for name, phase in phases:
        if args.only and name not in args.only:
            continue
        before = snapshot()
        asyncio.run(phase())  # type: ignore[arg-type]  # each lambda returns a coroutine
        settle()
        problems += report(name, before, snapshot())
    problems += report("overall", first, snapshot())
    for p in problems:
        print("FAIL:", p)
    print("soak:", "FAILED" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
