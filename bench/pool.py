"""Pool benchmark: anyfork.Pool next to the stdlib pools, loky, pebble and a raw os.fork floor.

    .venv/bin/python bench/pool.py            # a few minutes: 3 rounds
    .venv/bin/python bench/pool.py --quick    # smoke run: 1 round, N = 2 and 8 only
    .venv/bin/python bench/pool.py --map      # only the map rows (one run, about 15 s)

Measurements (issue 4, point 6), each the median of the rounds:

* **start-up**: from creating the pool until N workers have each completed one call
  (N = 2, 8, 32).  anyfork forks from a warm template (created before the clock starts, with
  the function defined in it); the floor is ``os.fork`` x N, each child writing one byte.  The
  stdlib pools are timed from construction to the results of N calls with ``chunksize=1``
  (they start their workers eagerly, or on demand for ProcessPoolExecutor).
* **throughput** of trivial calls: ``pool.map`` over M items, and ``submit`` in a loop (all
  submitted, then all waited for), on 2 workers; ``BlockingPool``: its ``map`` and a call.
* **latency**: ``submit(f, x).result()`` one at a time.
* **USS** per worker (``/proc/<pid>/smaps_rollup``: Private_Clean + Private_Dirty) with numpy
  imported in the template, after each worker has run one call.
* **map of 1,000,000 ints** (issue 9, point 1; one run): a trivial function (``_children.ident``)
  on 2 workers, every anyfork face with ``map``'s default arguments (batches sized by the pool),
  against ``multiprocessing.Pool(2).map`` (its default chunksize), ``ProcessPoolExecutor(2).map``
  (``chunksize=1000``, and its best of 1000/10000/100000) and loky's (``chunksize=1000``); all
  results taken (``list``, ``async for``).  Each row also gives the parent's CPU time per call
  (``getrusage``: all its threads, not the workers).  The floor rows: ``async for`` over the
  same number of results already in memory (what ``Pool.map``'s consumer pays whatever the
  pool does), and the parent's serial work without processes (the items read and pickled, the
  answers unpickled and handed over in C), and their sum, the least a ``Pool.map`` costs.

Peers that are not installed print "n/a".  Targets: warm N=32 start-up within 2x of raw
os.fork x N and at least 5x faster than the forkserver pools; submit().result() latency at
least 2x faster than ProcessPoolExecutor; per-worker USS with numpy preloaded under 3 MiB; every
anyfork face's map at least 1x ``multiprocessing.Pool.map`` and 3x ``ProcessPoolExecutor.map``
at its best chunksize.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import functools
import importlib.util
import itertools
import multiprocessing
import os
import pickle
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
# As bench/run.py: the repo root first (not bench/), so that "bench._children" imports by that
# name here, in anyfork's workers (which get our sys.path) and in the stdlib's spawned ones.
if sys.path[1:2] == [HERE]:
    sys.path[1] = os.path.dirname(HERE)

import anyfork  # noqa: E402  # needs the sys.path fix above
from bench import _children  # noqa: E402

FUNC = "def ident(x):\n    return x\n"


def ident(x: Any) -> Any:
    return x


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- start-up -------------------------------------------------------------------------------


def fork_floor(n: int) -> float:
    t0 = time.perf_counter()
    r, w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.write(w, b"x")
            os._exit(0)
        pids.append(pid)
    got = 0
    while got < n:
        got += len(os.read(r, n - got))
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return time.perf_counter() - t0


def anyfork_startup(n: int, tmpl: anyfork.Process) -> float:
    async def main() -> float:
        t0 = time.perf_counter()
        async with anyfork.Pool(tmpl, "ident", max=n, idle=n, load=1, start=0) as pool:
            await asyncio.gather(*(pool(i) for i in range(n)))
            elapsed = time.perf_counter() - t0
            assert pool.statistics().started == n
        return elapsed

    return asyncio.run(main())


def mp_startup(method: str) -> Callable[[int], float]:
    def run(n: int) -> float:
        ctx = multiprocessing.get_context(method)
        t0 = time.perf_counter()
        with ctx.Pool(n) as pool:
            pool.map(ident, range(n), chunksize=1)
            elapsed = time.perf_counter() - t0
        return elapsed

    return run


def executor_startup(make: Callable[[int], Any]) -> Callable[[int], float]:
    def run(n: int) -> float:
        t0 = time.perf_counter()
        ex = make(n)
        list(ex.map(ident, range(n)))
        elapsed = time.perf_counter() - t0
        ex.shutdown(wait=True)
        return elapsed

    return run


def pebble_startup(n: int) -> float:
    import pebble

    t0 = time.perf_counter()
    with pebble.ProcessPool(max_workers=n) as pool:
        futures = [pool.schedule(ident, args=(i,)) for i in range(n)]
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - t0
    return elapsed


def loky_make(n: int) -> Any:
    import loky

    return loky.ProcessPoolExecutor(max_workers=n)


# -- throughput and latency ----------------------------------------------------------------


def anyfork_map(m: int, tmpl: anyfork.Process) -> float:
    async def main() -> float:
        async with anyfork.Pool(tmpl, "ident", max=2, idle=2, load=8) as pool:
            await pool(0)
            t0 = time.perf_counter()
            n = 0
            async for _ in pool.map(range(m), max_in_flight=256):
                n += 1
            return m / (time.perf_counter() - t0)

    return asyncio.run(main())


def executor_rates(make: Callable[[], Any], fn: Any, m: int, k: int) -> tuple[float, float, float]:
    """(map calls/s, submit-loop calls/s, submit().result() latency s) for one executor."""
    ex = make()
    ident = fn
    try:
        ex.submit(ident, 0).result()
        t0 = time.perf_counter()
        list(ex.map(ident, range(m)))
        rate_map = m / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        futures = [ex.submit(ident, i) for i in range(m)]
        for f in futures:
            f.result()
        rate_submit = m / (time.perf_counter() - t0)
        lat = []
        for i in range(k):
            t0 = time.perf_counter()
            ex.submit(ident, i).result()
            lat.append(time.perf_counter() - t0)
        return rate_map, rate_submit, statistics.median(lat)
    finally:
        ex.shutdown(wait=True)


def blocking_rates(tmpl: anyfork.Process, m: int, k: int) -> tuple[float, float]:
    """(map calls/s, call latency s) of anyfork.BlockingPool on 2 workers."""
    with anyfork.BlockingPool(tmpl, "ident", max=2, idle=2, load=8) as pool:
        pool(0)
        t0 = time.perf_counter()
        for _ in pool.map(range(m), max_in_flight=256):
            pass
        rate = m / (time.perf_counter() - t0)
        lat = []
        for i in range(k):
            t0 = time.perf_counter()
            pool(i)
            lat.append(time.perf_counter() - t0)
        return rate, statistics.median(lat)


# -- map of 1,000,000 ints ------------------------------------------------------------------


def _drain(ex: Any, f: Any, items: range, chunksize: int) -> None:
    for _ in ex.map(f, items, chunksize=chunksize):
        pass


def _cpu() -> float:
    """CPU seconds of this process so far, all its threads (the workers' are not counted)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


Rate = tuple[float, float]  # (calls/s, the parent's CPU ns per call)


def map_rates(n: int) -> dict[str, Rate | None]:
    """calls/s and the parent's CPU time per call of each map row (``None``: the peer is not
    installed)."""
    f = _children.ident
    items = range(n)
    rates: dict[str, Rate | None] = {}

    def timed(name: str, run: Callable[[], object]) -> None:
        c0, t0 = _cpu(), time.perf_counter()
        run()
        t, c = time.perf_counter() - t0, _cpu() - c0
        rates[name] = (n / t, c * 1e9 / n)

    async def pool_map() -> None:
        async with anyfork.Pool(None, f, max=2, idle=2) as pool:
            [r async for r in pool.map(range(1000))]  # warm: workers up, sizes measured once

            c0, t0 = _cpu(), time.perf_counter()
            assert len(await pool.map(items)) == n  # the list, as multiprocessing's map
            t, c = time.perf_counter() - t0, _cpu() - c0
            rates["anyfork Pool.map"] = (n / t, c * 1e9 / n)
            c0, t0 = _cpu(), time.perf_counter()
            assert len([r async for r in pool.map(items)]) == n
            t, c = time.perf_counter() - t0, _cpu() - c0
            rates["anyfork Pool.map, async for (one by one)"] = (n / t, c * 1e9 / n)

    asyncio.run(pool_map())
    with anyfork.BlockingPool(None, f, max=2, idle=2) as pool:
        list(pool.map(range(1000)))
        timed("anyfork BlockingPool.map", lambda: list(pool.map(items)))
    with anyfork.PoolExecutor(2) as ex:
        list(ex.map(f, range(1000)))
        timed("anyfork PoolExecutor.map", lambda: list(ex.map(f, items)))
    with multiprocessing.Pool(2) as mp_pool:
        mp_pool.map(f, range(1000))
        timed("multiprocessing.Pool.map", lambda: mp_pool.map(f, items))
    with ProcessPoolExecutor(2) as ppe:
        list(ppe.map(f, range(1000), chunksize=100))
        for size in (1000, 10000, 100000):
            timed(f"PPE.map chunksize={size}", functools.partial(_drain, ppe, f, items, size))
    if has("loky"):
        ex2 = loky_make(2)
        try:
            list(ex2.map(f, range(1000), chunksize=100))
            timed("loky map chunksize=1000", lambda: list(ex2.map(f, items, chunksize=1000)))
        finally:
            ex2.shutdown(wait=True)
    else:
        rates["loky map chunksize=1000"] = None

    async def floor() -> None:
        chunks = [list(range(i, min(n, i + 65536))) for i in range(0, n, 65536)]

        async def results() -> Any:
            for chunk in chunks:
                for r in chunk:
                    yield r

        c0, t0 = _cpu(), time.perf_counter()
        [r async for r in results()]
        t, c = time.perf_counter() - t0, _cpu() - c0
        rates["floor: async for over the results in memory"] = (n / t, c * 1e9 / n)

    asyncio.run(floor())
    answers = [pickle.dumps(list(range(i, min(n, i + 65536))), 5) for i in range(0, n, 65536)]
    timed(SERIAL, functools.partial(_serial_work, n, answers))
    return rates


SERIAL = "floor: the parent's serial work, no IPC"


def _serial_work(n: int, answers: list[bytes]) -> None:
    """What a pool's parent does per item whatever its design, in batches of 65,536: the items
    read from the iterable and pickled, the (ready) answers unpickled and their results handed
    over one by one in C; no process, no socket, no wait."""
    it = iter(items := range(n))
    del items
    for answer in answers:
        pickle.dumps([list(itertools.islice(it, 65536))], 5)
        for _ in pickle.loads(answer):
            pass


# -- memory --------------------------------------------------------------------------------


def uss(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def numpy_uss(workers: int) -> list[int]:
    tmpl = anyfork.new().require("anyfork._child._rpc_server", "numpy").eval(FUNC)

    async def main() -> list[int]:
        async with anyfork.Pool(tmpl, "ident", max=workers, idle=workers, load=1) as pool:
            await asyncio.gather(*(pool(i) for i in range(workers)))
            return [uss(pid) for pid in pool.worker_pids()]

    try:
        return asyncio.run(main())
    finally:
        tmpl.close()


# -- the run -------------------------------------------------------------------------------


def fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:9.1f}"


def thread_handoff_floor(n: int = 3000) -> float:
    """Median seconds for one thread to hand a concurrent.futures.Future to another through a
    SimpleQueue and wake in result() when the other sets it: no process, no IPC at all."""
    import queue
    import threading

    inbox: queue.SimpleQueue[cf.Future[int] | None] = queue.SimpleQueue()

    def serve() -> None:
        while (fut := inbox.get()) is not None:
            fut.set_result(1)

    thread = threading.Thread(target=serve)
    thread.start()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fut: cf.Future[int] = cf.Future()
        inbox.put(fut)
        fut.result()
        times.append(time.perf_counter() - start)
    inbox.put(None)
    thread.join()
    return statistics.median(times)


def map_rows(n: int) -> None:
    """The map rows (one run), their targets, and the floors that bound them."""
    maps = map_rates(n)
    print()
    print(
        f"{f'map of {n:,} ints (2 workers)':50}{'calls/s':>12}{'vs mp.Pool.map':>16}"
        f"{'parent CPU ns/call':>20}"
    )
    print("-" * 98)
    mp_rate = maps["multiprocessing.Pool.map"]
    assert mp_rate is not None
    floors = [maps["floor: async for over the results in memory"], maps[SERIAL]]
    both = 1 / sum(1 / r[0] for r in floors if r is not None)
    maps["floor: both (the least an async for costs)"] = (both, sum(r[1] for r in floors if r))
    for name, rate in maps.items():
        if rate is None:
            print(f"{name:50}{'n/a':>12}")
        else:
            print(f"{name:50}{rate[0]:12.0f}{rate[0] / mp_rate[0]:15.2f}x{rate[1]:20.0f}")
    print()
    print("map targets")
    ppe_best = max(r[0] for k, r in maps.items() if k.startswith("PPE") and r is not None)
    for face in ("Pool", "BlockingPool", "PoolExecutor"):
        got = maps[f"anyfork {face}.map"]
        assert got is not None
        target(
            f"{face}.map >= 1x multiprocessing.Pool.map",
            got[0] >= mp_rate[0],
            f"{got[0] / mp_rate[0]:.2f}x",
        )
        target(
            f"{face}.map >= 3x PPE.map at its best chunksize",
            got[0] >= 3 * ppe_best,
            f"{got[0] / ppe_best:.2f}x",
        )


def target(label: str, ok: bool | None, detail: str) -> None:
    verdict = "n/a" if ok is None else "PASS" if ok else "MISS"
    print(f"  {label:62} {detail:>18}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--map", action="store_true", help="only the map rows (one run)")
    opts = parser.parse_args()
    if opts.map:
        print(f"anyfork map benchmark  ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        map_rows(100_000 if opts.quick else 1_000_000)
        return
    rounds = 1 if opts.quick else 3
    sizes = [2, 8] if opts.quick else [2, 8, 32, 64]  # (the docs' start-up chart: N 2..64)
    m = 2000 if opts.quick else 20000
    k = 200 if opts.quick else 1000

    # A warm template: up, with the RPC server and the function loaded, before any clock starts.
    tmpl = anyfork.new().require("anyfork._child._rpc_server").eval(FUNC)
    tmpl.fork().close()

    startup: dict[str, Callable[[int], float] | None] = {
        "os.fork x N + pipe  [floor]": fork_floor,
        "anyfork.Pool, warm template": lambda n: anyfork_startup(n, tmpl),
        "multiprocessing.Pool fork": mp_startup("fork"),
        "multiprocessing.Pool forkserver": mp_startup("forkserver"),
        "multiprocessing.Pool spawn": mp_startup("spawn"),
        "ProcessPoolExecutor (forkserver)": executor_startup(
            lambda n: ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("forkserver"))
        ),
        "loky.ProcessPoolExecutor": executor_startup(loky_make) if has("loky") else None,
        "pebble.ProcessPool": pebble_startup if has("pebble") else None,
    }
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for n in sizes:
            for name, fn in startup.items():
                if fn is not None:
                    results.setdefault((name, n), []).append(fn(n))

    print(f"anyfork pool benchmark  ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
    print(f"rounds {rounds}; start-up: median ms until N workers each completed one call")
    print()
    print(f"{'start-up':40}" + "".join(f"{'N=' + str(n):>11}" for n in sizes))
    print("-" * (40 + 11 * len(sizes)))
    med: dict[tuple[str, int], float] = {}
    for name in startup:
        cells = []
        for n in sizes:
            values = results.get((name, n))
            if values:
                med[name, n] = statistics.median(values)
            cells.append(fmt_ms(med.get((name, n))).rjust(11))
        print(f"{name:40}" + "".join(cells))

    print()
    print(f"{'throughput (2 workers)':40}{'map/s':>11}{'submit/s':>11}{'latency ms':>12}")
    print("-" * 74)
    rates: dict[str, tuple[float, float, float]] = {}

    def anyfork_executor() -> Any:
        return anyfork.PoolExecutor(2, template=tmpl, func="ident", idle=2, load=8)

    # anyfork's pool serves "ident" as defined in its template; the others pickle ident.
    fns: dict[str, Any] = {"anyfork.PoolExecutor": "ident"}
    peers: dict[str, Callable[[], Any] | None] = {
        "anyfork.PoolExecutor": anyfork_executor,
        "ProcessPoolExecutor (forkserver)": lambda: ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("forkserver")
        ),
        "loky.ProcessPoolExecutor": (lambda: loky_make(2)) if has("loky") else None,
    }
    for name, make in peers.items():
        if make is None:
            print(f"{name:40}{'n/a':>11}")
            continue
        runs = [executor_rates(make, fns.get(name, ident), m, k) for _ in range(rounds)]
        rates[name] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs),
        )
        r = rates[name]
        print(f"{name:40}{r[0]:11.0f}{r[1]:11.0f}{r[2] * 1000:12.3f}")
    amap = statistics.median(anyfork_map(m, tmpl) for _ in range(rounds))
    print(f"{'anyfork.Pool.map (asyncio)':40}{amap:11.0f}")
    blocking = [blocking_rates(tmpl, m, k) for _ in range(rounds)]
    bmap = statistics.median(r[0] for r in blocking)
    blat = statistics.median(r[1] for r in blocking)
    print(f"{'anyfork.BlockingPool (map, call)':40}{bmap:11.0f}{'':11}{blat * 1000:12.3f}")
    handoff = thread_handoff_floor()
    print(
        f"{'floor: a thread handoff round trip':40}{'':22}{handoff * 1000:12.3f}"
        "  (what an executor's submit().result() costs when another thread runs the call)"
    )

    map_rows(100_000 if opts.quick else 1_000_000)

    mem = numpy_uss(4) if has("numpy") else []
    print()
    if mem:
        print(
            "per-worker USS, numpy in the template: "
            + ", ".join(f"{u / 2**20:.2f} MiB" for u in mem)
        )
    else:
        print("per-worker USS, numpy in the template: n/a (numpy not installed)")

    print()
    print("targets")

    top = 32 if 32 in sizes else sizes[-1]  # the targets are stated at N=32
    a = med.get(("anyfork.Pool, warm template", top))
    floor = med.get(("os.fork x N + pipe  [floor]", top))
    fs = [
        med.get((name, top))
        for name in ("multiprocessing.Pool forkserver", "ProcessPoolExecutor (forkserver)")
    ]
    if a and floor:
        target(f"N={top} start-up within 2x of os.fork x N", a <= 2 * floor, f"{a / floor:.2f}x")
    for name, f in zip(("mp.Pool forkserver", "PPE forkserver"), fs, strict=True):
        if a and f:
            target(f"N={top} start-up >= 5x faster than {name}", f >= 5 * a, f"{f / a:.1f}x")
    ours = rates.get("anyfork.PoolExecutor")
    ppe = rates.get("ProcessPoolExecutor (forkserver)")
    if ours and ppe:
        target(
            "submit().result() latency >= 2x faster than PPE",
            ppe[2] >= 2 * ours[2],
            f"{ppe[2] / ours[2]:.1f}x",
        )
    if mem:
        worst = max(mem)
        target("per-worker USS with numpy < 3 MiB", worst < 3 * 2**20, f"{worst / 2**20:.2f} MiB")
    tmpl.close()


if __name__ == "__main__":
    main()
