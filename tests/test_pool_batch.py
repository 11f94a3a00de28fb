"""Batched maps (issue 9, point 1): a map is one job in the pool's queue (``_map.MapJob``),
cut into calls (batches) as workers take them and sized from the time the earlier ones took
(the RPC layer's ``Sizer``), on every face: results in order, progress counting items exactly,
an exception at its item's position, ``chunksize`` with the ``concurrent.futures`` meaning, one
call per item for serialisers that cannot batch.  The bookkeeping is checked without processes
too, by hand and by hypothesis."""

from __future__ import annotations

import concurrent.futures as cf
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anyfork
import pool_faces
import pool_funcs
from anyfork._pool import _policy
from anyfork._pool._core import Launch, PoolCore, Send
from anyfork._pool._map import Delivery, MapJob, Results, Unit, bmap
from anyfork._pool._records import Worker
from anyfork._rpc._batching import BatchResult
from pool_faces import Face

# -- the bookkeeping, without processes ----------------------------------------------------------


def make_job(n: int, chunksize: int | None = None, batchable: bool = True) -> MapJob[Unit]:
    """A job of ``n`` items whose calls are its units themselves (no engine)."""
    job: MapJob[Unit] = MapJob(
        lambda job, unit: unit, chunksize=chunksize, batchable=batchable, workers=2
    )
    job.feed([list(range(n))], True)
    return job


def answer(job: MapJob[Unit], unit: Unit, bad: set[int], took: float = 0.0) -> None:
    """What a worker running ``f(x) = 10 * x`` answers, failing at the items in ``bad``."""
    assert unit.columns is not None
    values = unit.columns[0]
    results: list[Any] = []
    error = None
    for x in values:
        if x in bad:
            error = pool_funcs.PoolError(f"item {x}")
            break
        results.append(10 * x)
    fut: cf.Future[Any] = cf.Future()
    if unit.n == 1 and error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(results if unit.n == 1 else BatchResult(results, error))
    job.answered(unit, fut, took, cf.CancelledError)


def deliver(job: MapJob[Unit], progress: list[tuple[int, int | None]]) -> tuple[list[Any], Any]:
    """Every result the map gives, in order, and what it raised (``None``)."""
    delivery = Delivery(job, (), None, lambda d, t: progress.append((d, t)), print, print)
    out: list[Any] = []
    try:
        for result in Results.of(bmap(delivery)):
            out.append(result)  # noqa: PERF402 - the results before an error are the point
    except pool_funcs.PoolError as exc:
        return out, exc
    return out, None


def test_sizes_start_at_one_then_grow_and_chunksize_fixes_them() -> None:
    job = make_job(1000)
    first = job.take(0.0)
    assert first is not None
    assert first.n == 1  # nothing measured yet
    answer(job, first, set(), took=1e-5)  # cheap: the next call carries more
    second = job.take(0.0)
    assert second is not None
    assert second.n > 1
    fixed = make_job(10, chunksize=4)
    sizes = [u.n for u in iter(lambda: fixed.take(0.0), None)]
    assert sizes == [4, 4, 2]
    single = make_job(5, chunksize=None, batchable=False)  # "bytes", "str": one per item
    assert [u.n for u in iter(lambda: single.take(0.0), None)] == [1] * 5


def test_no_call_is_cut_after_a_failure() -> None:
    job = make_job(10, chunksize=2)
    a, b = job.take(0.0), job.take(0.0)
    assert a is not None
    assert b is not None
    answer(job, b, {3})
    assert job.take(0.0) is None
    assert job.units(10) == 0
    answer(job, a, set())
    progress: list[tuple[int, int | None]] = []
    got, error = deliver(job, progress)
    assert got == [0, 10, 20]  # the items before the failed one, in order
    assert str(error) == "item 3"
    assert progress == [(2, 10), (3, 10)]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 300),
    chunksize=st.one_of(st.none(), st.integers(1, 50)),
    bad=st.sets(st.integers(0, 300), max_size=3),
    seed=st.integers(0, 2**32),
)
def test_results_in_order_error_at_its_item_progress_exact(
    n: int, chunksize: int | None, bad: set[int], seed: int
) -> None:
    """Calls cut and answered in any order, some failing: the map gives exactly the items
    before the first failed one, in order, then its error; progress counts them."""
    rng = random.Random(seed)
    job = make_job(n, chunksize)
    outstanding: list[Unit] = []
    while True:
        if outstanding and (rng.random() < 0.5 or not job.units(1)):
            unit = outstanding.pop(rng.randrange(len(outstanding)))
            answer(job, unit, bad, took=rng.choice([1e-6, 0.01, 0.2]))
        elif job.units(1):
            cut = job.take(0.0)
            assert cut is not None
            outstanding.append(cut)
        else:
            break
    progress: list[tuple[int, int | None]] = []
    got, error = deliver(job, progress)
    first_bad = min((b for b in bad if b < n), default=None)
    end = n if first_bad is None else first_bad
    assert got == [10 * x for x in range(end)]
    assert (error is None) is (first_bad is None)
    if first_bad is not None:
        assert str(error) == f"item {first_bad}"
    dones = [d for d, _ in progress]
    assert dones == sorted(set(dones))
    assert (dones[-1] if dones else 0) == end
    assert all(t == n for _, t in progress)


def test_the_core_gives_a_jobs_calls_to_the_least_loaded_workers() -> None:
    core: PoolCore[Worker, Unit] = PoolCore(
        _policy.Settings(2, 0, 2, start=0, stop=0),
        max_calls=None,
        max_memory=None,
        new_worker=Worker,
        measure=lambda pid: None,
    )
    job = make_job(100, chunksize=10)
    core.submit_job(job)
    core.submit("after")  # type: ignore[arg-type]  # a plain call behind the map
    assert core.statistics().queued == 101  # the job's items, and the call
    workers = [e.worker for e in core.schedule(0.0) if isinstance(e, Launch)]
    assert len(workers) == 2  # the job wants both workers at once
    for i, w in enumerate(workers):
        core.started(w, 100 + i, 0.0)
    sends = [e for e in core.schedule(0.0) if isinstance(e, Send)]
    assert [(s.worker.id, s.call.start) for s in sends] == [(1, 0), (2, 10), (1, 20), (2, 30)]
    assert core.statistics().queued == 61
    withdrawn = core.withdraw(job)
    assert withdrawn
    assert list(core.queue) == ["after"]  # type: ignore[comparison-overlap]
    calls, _ = core.cancel()
    assert calls == ["after"]  # type: ignore[comparison-overlap]


# -- every face ----------------------------------------------------------------------------------


face = pool_faces.face  # the fixture: each test taking it runs on every face


def collect(results: Any, out: list[Any]) -> None:
    for r in results:
        out.append(r)  # noqa: PERF402 - the results before an error are the point


def test_a_big_map_in_order_with_the_error_at_its_items_position(face: Face) -> None:
    face.open(None, "pool_funcs:checked", max=2)
    values = list(range(20000))
    values[15000] = -1
    got: list[Any] = []
    with pytest.raises(pool_funcs.PoolError, match="item -1"):
        collect(face.map_iter(values), got)
    assert got == list(range(15000))
    assert face.map(range(5000)) == list(range(5000))


@pytest.mark.parametrize("face", ["Pool", "BlockingPool"], indirect=True)
@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_progress_counts_items_exactly_and_chunksize_fixes_the_calls(
    face: Face, chunksize: int | None
) -> None:
    face.open(None, "pool_funcs:double", max=2)
    progress: list[tuple[int, int | None]] = []
    n = 3000 if chunksize != 1 else 300
    results = face.map_iter(
        range(n), chunksize=chunksize, progress=lambda d, t: progress.append((d, t))
    )
    got: list[Any] = []
    collect(results, got)
    assert got == [2 * i for i in range(n)]
    dones = [d for d, _ in progress]
    assert dones == sorted(set(dones))
    assert dones[-1] == n
    assert {t for _, t in progress} == {n}
    if chunksize is None:
        assert len(dones) < n // 10  # batches, sized by the pool
    else:
        # One report per call: every call carries `chunksize` items (the last the rest).
        assert dones == [min(n, k) for k in range(chunksize, n + chunksize, chunksize)]


def test_an_executors_batch_counts_as_one_task_of_its_worker() -> None:
    """As a chunk does in the standard library (``max_tasks_per_child``): 20,000 items in
    batches replace the worker a few times, not 400."""
    with anyfork.PoolExecutor(1, max_tasks_per_child=50) as ex:
        assert list(ex.map(abs, range(-10000, 10000))) == [abs(i) for i in range(-10000, 10000)]
        batched = ex.statistics().started
        assert list(ex.map(abs, range(-100, 100), chunksize=1)) == [
            abs(i) for i in range(-100, 100)
        ]
        assert ex.statistics().started - batched >= 200 // 50  # one task per item
    assert batched < 50


@pytest.mark.parametrize("face", ["Pool", "BlockingPool", "PoolExecutor"], indirect=True)
def test_serialisers_that_cannot_batch_send_a_call_per_item(face: Face) -> None:
    face.open(None, "pool_funcs:double", max=2, serializer="bytes")
    values = [bytes([i % 256]) for i in range(500)]
    assert face.map(values) == [v * 2 for v in values]


@pytest.mark.parametrize("serializer", ["pickle", "json"])
def test_a_map_of_a_range_on_every_face_and_serialiser(face: Face, serializer: str) -> None:
    face.open(None, "pool_funcs:double", max=2, serializer=serializer)
    assert face.map(range(3, 3000)) == [2 * x for x in range(3, 3000)]
    assert face.map(range(0)) == []
    assert face.map(range(10, 0, -3)) == [20, 14, 8, 2]
