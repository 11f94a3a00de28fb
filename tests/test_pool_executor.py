"""``PoolExecutor`` as a drop-in ``ProcessPoolExecutor`` (issue 9, point 3), beyond CPython's
own tests (``test_cf_executor.py``): its constructor, positional order included; workers
started as calls queue, up to ``max_workers`` at once; a dead worker's calls fail with a
``BrokenProcessPool``; ``multiprocessing.Manager()`` proxies work in the workers (and cost
nothing when there is no Manager); plain futures; anyfork's own options, and the names other
pools give them."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import inspect
import multiprocessing
import os
import re
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import anyfork
import cf_funcs
import pool_funcs
from helpers import WAIT, Gate

TESTS = str(Path(__file__).resolve().parent)
SRC = str(Path(anyfork.__file__).resolve().parent.parent)


def test_the_constructor_is_process_pool_executors_positional_order_included() -> None:
    theirs = list(inspect.signature(cf.ProcessPoolExecutor).parameters)
    ours = list(inspect.signature(anyfork.PoolExecutor).parameters)
    assert ours[: len(theirs)] == theirs
    # Positionally, as the standard library's: max_workers, mp_context (ignored),
    # initializer, initargs, max_tasks_per_child.
    context = multiprocessing.get_context("spawn")
    with anyfork.PoolExecutor(1, context, cf_funcs.init, ("set up",), 2) as ex:
        first = ex.submit(os.getpid).result(WAIT)
        assert ex.submit(cf_funcs.get_init_status).result(WAIT) == "set up"
        assert ex.submit(os.getpid).result(WAIT) != first  # replaced after 2 calls
        assert ex.statistics().workers == 1


def test_bad_arguments_say_what_they_should_be() -> None:
    with pytest.raises(TypeError, match=r"first argument is max_workers.*template="):
        anyfork.PoolExecutor(anyfork.new())  # type: ignore[arg-type]  # the old order
    with pytest.raises(TypeError, match=r"first argument is max_workers.*func="):
        anyfork.PoolExecutor("pool_funcs:double")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initializer must be a callable"):
        anyfork.PoolExecutor(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        anyfork.PoolExecutor(1, max_tasks_per_child=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot be pickled"):
        anyfork.PoolExecutor(1, initializer=lambda: None)


@pytest.mark.parametrize(
    ("face", "theirs", "ours"),
    [
        ("Pool", "processes", "max"),
        ("Pool", "initializer", "init"),
        ("Pool", "maxtasksperchild", "max_calls"),
        ("Pool", "max_tasks_per_child", "max_calls"),
        ("BlockingPool", "processes", "max"),
        ("BlockingPool", "initializer", "init"),
        ("BlockingPool", "maxtasksperchild", "max_calls"),
        ("PoolExecutor", "processes", "max_workers"),
        ("PoolExecutor", "maxtasksperchild", "max_tasks_per_child"),
        ("PoolExecutor", "max", "max_workers"),
        ("PoolExecutor", "max_calls", "max_tasks_per_child"),
    ],
)
def test_another_pools_keyword_names_anyforks(face: str, theirs: str, ours: str) -> None:
    options: dict[str, Any] = {theirs: 2}
    make = (
        anyfork.PoolExecutor
        if face == "PoolExecutor"
        else functools.partial(getattr(anyfork, face), None, "pool_funcs:double")
    )
    message = rf"{face}\(\) got unexpected keyword arguments \['{theirs}'\] \({theirs}= is {ours}="
    with pytest.raises(TypeError, match=message):
        make(**options)


def test_workers_start_at_once_as_calls_queue_up_to_max_workers(gate: Gate) -> None:
    """Not one at a time behind a pacing gap: 8 calls on an executor of 4 start 4 workers at
    the submits (once ran 200 queued calls on one worker of 64)."""
    ex = anyfork.PoolExecutor(
        4, template=gate.template(), func="pool_funcs:gated", **gate.options()
    )
    try:
        futures = [ex.submit("pool_funcs:gated", i) for i in range(8)]
        assert ex.statistics().workers == 4  # all starting now, at the submits
        assert len({pid for _, pid in gate.wait_started(4)}) == 4
        gate.release(8)
        assert sorted(f.result(WAIT)[0] for f in futures) == list(range(8))
    finally:
        ex._engine.close(timeout=WAIT)


def test_a_dead_workers_calls_fail_as_a_broken_process_pool_and_the_pool_serves_on() -> None:
    with anyfork.PoolExecutor(1) as ex:
        fut = ex.submit(pool_funcs.die, 3)
        with pytest.raises(BrokenProcessPool) as info:
            fut.result(WAIT)
        assert isinstance(info.value, anyfork.WorkerDiedError)
        assert info.value.returncode == 3
        assert ex.submit(pow, 3, 2).result(WAIT) == 9


def test_futures_are_plain_concurrent_futures() -> None:
    with anyfork.PoolExecutor(1) as ex:
        fut = ex.submit(pow, 2, 3)
        assert fut.result(WAIT) == 8
        assert isinstance(fut, cf.Future)
        assert re.fullmatch(r"<Future at 0x[0-9a-f]+ state=finished returned int>", repr(fut))
        assert not {n for n in dir(fut) if not n.startswith("_")} - set(dir(cf.Future()))


def test_manager_proxies_work_in_the_workers() -> None:
    with multiprocessing.get_context("fork").Manager() as manager, anyfork.PoolExecutor(2) as ex:
        queue, shared, event = manager.Queue(), manager.dict(), manager.Event()
        assert ex.submit(cf_funcs.put, queue, "q").result(WAIT) == "q"
        assert queue.get(timeout=WAIT) == "q"
        ex.submit(shared.__setitem__, "k", "v").result(WAIT)
        assert shared["k"] == "v"
        ex.submit(event.set).result(WAIT)
        assert event.is_set()


def test_a_manager_made_after_the_workers_started_works_too() -> None:
    code = (
        "import multiprocessing, anyfork, cf_funcs\n"
        "with anyfork.PoolExecutor(1) as ex:\n"
        "    pid = ex.submit(cf_funcs.mul, 2, 3).result(30)\n"  # a worker without the key
        "    with multiprocessing.get_context('fork').Manager() as m:\n"
        "        q = m.Queue()\n"
        "        print(ex.submit(cf_funcs.put, q, 'late').result(30), q.get(timeout=30))\n"
    )
    result = python(code)
    assert result.stdout.split() == [b"late", b"late"], result.stderr.decode()


def test_without_a_manager_the_workers_import_no_multiprocessing() -> None:
    code = (
        "import anyfork, pool_funcs\n"
        "with anyfork.PoolExecutor(1) as ex:\n"
        "    print(ex.submit(pool_funcs.has_multiprocessing).result(30))\n"
    )
    result = python(code)
    assert result.stdout.split() == [b"False"], result.stderr.decode()


def python(code: str) -> subprocess.CompletedProcess[bytes]:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join((SRC, TESTS)))
    environ.pop("ANYFORK_PYTHON", None)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=environ, timeout=WAIT * 2
    )


def test_an_initializer_runs_with_the_users_init_and_the_templates_arguments(gate: Gate) -> None:
    ex = anyfork.PoolExecutor(
        1,
        initializer=cf_funcs.init,
        initargs=("initialized",),
        template=gate.template(),
        **gate.options(),
    )
    try:
        assert ex.submit(cf_funcs.get_init_status).result(WAIT) == "initialized"
        fut = ex.submit(cf_funcs.blocked, "gate kept")  # init_gate ran: the worker has it
        gate.wait_started(1)
        gate.release(1)
        assert fut.result(WAIT) == "gate kept"
    finally:
        ex._engine.close(timeout=WAIT)


def test_map_takes_every_item_at_once_and_batches_by_default() -> None:
    seen: list[tuple[int, int | None]] = []
    with anyfork.PoolExecutor(2) as ex:
        results = ex.map(pow, range(3000), [2] * 3000)
        ex.shutdown(wait=True)  # all were taken at the call: they run anyway
        assert list(results) == [i**2 for i in range(3000)]
        assert ex.statistics().calls == 3000
    with anyfork.BlockingPool(None, "pool_funcs:double", max=2) as pool:
        assert list(pool.map(range(3000), progress=lambda d, t: seen.append((d, t)))) == [
            2 * i for i in range(3000)
        ]
    assert seen[-1] == (3000, 3000)
    assert len(seen) < 3000  # fewer calls than items: batches
    with anyfork.PoolExecutor(1) as ex, pytest.raises(ValueError, match="chunksize must be >= 1"):
        ex.map(pow, [1], [2], chunksize=0)
