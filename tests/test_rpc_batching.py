"""Batches without processes: the sizer (``_rpc/_batching``), the columns of a map, and a map's
bookkeeping (``_rpc/_map``) driven by hand with a fake clock."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anyfork._rpc import _batching as B
from anyfork._rpc._map import MapRun, Unit

# -- the sizer ------------------------------------------------------------------------------------


def test_sizes_start_small_and_grow_by_steps() -> None:
    sizer = B.Sizer(target=0.03)
    sizes = []
    for _ in range(8):
        n = sizer.next_size()
        sizes.append(n)
        sizer.observe(n, 0.0001 + n * 1e-7)  # 0.1 ms per frame, 0.1 us per item
    assert sizes == [1, 8, 64, 512, 4096, 32768, 65536, 65536]


def test_slow_items_keep_batches_small() -> None:
    sizer = B.Sizer(target=0.03)
    sizer.observe(1, 0.5)  # one item takes longer than a batch should
    assert sizer.next_size() == 1
    sizer.observe(1, 0.02)
    assert sizer.next_size() == 1  # within [target/2, 2*target]: it stays


def test_a_slow_batch_shrinks_the_size_to_the_target() -> None:
    sizer = B.Sizer(target=0.03)
    for n in (1, 8, 64, 512):
        sizer.observe(n, 0.0001)
    assert sizer.next_size() == 4096
    sizer.observe(4096, 0.3)  # 10x the target: the items got slower
    assert sizer.next_size() == 409


def test_an_old_small_batch_does_not_pull_the_size_down() -> None:
    sizer = B.Sizer(target=0.03)
    for n in (1, 8, 64):
        sizer.observe(n, 0.0001)
    assert sizer.next_size() == 512
    sizer.observe(1, 0.001)  # sent long ago: its frame cost makes an item look slow
    assert sizer.next_size() == 512


def test_the_last_batches_spread_over_the_workers() -> None:
    sizer = B.Sizer(workers=2)
    sizer.size = 1000
    assert sizer.next_size(remaining=10_000) == 1000
    assert sizer.next_size(remaining=3000) == 750
    assert sizer.next_size(remaining=3) == 1
    assert sizer.next_size(remaining=0) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0}, "target"),
        ({"target": math.inf}, "target"),
        ({"target": math.nan}, "target"),
        ({"workers": 0}, "workers"),
        ({"max_size": 0}, "max_size"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        B.Sizer(**kwargs)


def test_bad_observations() -> None:
    sizer = B.Sizer()
    with pytest.raises(ValueError, match="at least one item"):
        sizer.observe(0, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        sizer.observe(1, math.nan)
    sizer.observe(1, -1.0)  # a clock that went back: as fast as can be told
    assert sizer.next_size() == B.GROWTH


_durations = st.floats(min_value=-1, max_value=100, allow_nan=False)


@given(
    st.lists(st.tuples(st.integers(1, 1 << 20), _durations), max_size=40),
    st.integers(1, 8),
    st.integers(1, 1 << 17),
    st.one_of(st.none(), st.integers(0, 1 << 21)),
)
def test_sizes_stay_in_bounds(
    observations: list[tuple[int, float]], workers: int, max_size: int, remaining: int | None
) -> None:
    sizer = B.Sizer(workers=workers, max_size=max_size)
    for items, duration in observations:
        before = sizer.next_size()
        sizer.observe(items, duration)
        after = sizer.next_size()
        assert 1 <= after <= max(max_size, 1)
        if duration >= sizer.target / 2:
            assert after <= before  # not fast: it never grows
        else:
            assert before <= after <= max(before, items * B.GROWTH)  # fast: grows by steps
        n = sizer.next_size(remaining)
        assert 1 <= n <= after
        if remaining:
            assert n <= -(-remaining // (2 * workers))


@given(
    st.floats(min_value=1e-5, max_value=1e-2),  # the cost of a frame
    st.floats(min_value=1e-8, max_value=1.0),  # the cost of an item
)
def test_sizes_converge_to_the_target(overhead: float, per_item: float) -> None:
    """With a batch costing ``overhead + n * per_item``, the sizes settle where a batch takes
    between half and twice the target (or at a bound), within a few batches."""
    sizer = B.Sizer(target=0.03)
    for _ in range(12):
        n = sizer.next_size()
        sizer.observe(n, overhead + n * per_item)
    n = sizer.next_size()
    took = overhead + n * per_item
    assert (
        sizer.target / 2 <= took <= 2 * sizer.target
        or (n == B.MAX_SIZE and took < 2 * sizer.target)
        or (n == 1 and took > sizer.target / 2)
    ), (n, took)


def test_service_time_counts_no_queueing() -> None:
    assert B.service_time(sent=10.0, answered=10.5, previous=None) == 0.5
    assert B.service_time(sent=10.0, answered=10.5, previous=9.0) == 0.5  # idle worker
    assert B.service_time(sent=10.0, answered=10.5, previous=10.4) == pytest.approx(0.1)
    assert B.service_time(sent=10.0, answered=9.0, previous=None) == 0.0  # clock skew


# -- columns --------------------------------------------------------------------------------------


def test_columns_of_one_or_several_iterables() -> None:
    lone: list[Any] = B.columns_of([range(3)])
    assert lone == [range(3)]  # a lone range stays one: sent as slices
    assert B.columns_of([(1, 2)]) == [[1, 2]]
    assert B.columns_of([range(3), "abcd"]) == [[0, 1, 2], ["a", "b", "c"]]
    assert B.columns_of([itertools.count(), "ab"]) == [[0, 1], ["a", "b"]]  # zip's way
    assert B.columns_of([[], "ab"]) == [[], []]
    assert B.columns_of([]) == []


def test_check_columns() -> None:
    column = [1, 2]
    checked = B.check_columns([column, (3, 4)])
    assert checked == [[1, 2], [3, 4]]
    assert checked[0] is column  # not copied
    numbers = range(5, 7)
    kept: list[Any] = B.check_columns([numbers])
    assert kept[0] is numbers  # a range is not made a list
    with pytest.raises(ValueError, match="at least one column"):
        B.check_columns([])
    with pytest.raises(ValueError, match=r"all as long, not \[1, 2\]"):
        B.check_columns([[1], [1, 2]])


def test_batch_result() -> None:
    assert B.BatchResult([1, 2]).failed_at is None
    err = ValueError("x")
    result = B.BatchResult([1], err)
    assert result.failed_at == 1
    assert "then ValueError" in repr(result)


# -- a map's bookkeeping --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drain(run: MapRun) -> list[Unit]:
    units = []
    while (unit := run.next_unit()) is not None:
        units.append(unit)
    return units


def _answer(unit: Unit, fail_at: int | None = None, exc: BaseException | None = None) -> None:
    """Answer as the worker would: 10 * each item, or fail at item ``fail_at`` (absolute)."""
    column = unit.run.columns[0]
    values = [10 * x for x in column[unit.start : unit.start + unit.n]]
    if unit.n == 1:
        if fail_at == unit.start:
            unit.set_exception(exc or ValueError(unit.start))
        else:
            unit.set_result(values[0])
        return
    if fail_at is not None and unit.start <= fail_at < unit.start + unit.n:
        unit.set_result(B.BatchResult(values[: fail_at - unit.start], exc or ValueError(fail_at)))
    else:
        unit.set_result(B.BatchResult(values))


def test_auto_map_grows_its_batches_keeps_a_window_and_orders_results() -> None:
    clock = Clock()
    run = MapRun([list(range(10_000))], None, True, clock)
    wakes: list[int] = []
    run.wake = lambda: wakes.append(run.answers)
    sizes = []
    while not run.finished:
        units = _drain(run)
        assert run.in_flight <= B.WINDOW
        sizes += [u.n for u in units]
        for unit in units:
            clock.now += 0.0001
            _answer(unit)
    assert sizes[:4] == [1, 1, 1, 1]  # small first, a window of them
    assert sizes[4] == 8
    assert sum(sizes) == 10_000
    assert run.outcome() == [10 * x for x in range(10_000)]
    assert wakes  # the caller is woken to send more


@pytest.mark.parametrize(("chunksize", "sizes"), [(3, [3, 3, 3, 1]), (100, [10]), (1, [1] * 10)])
def test_explicit_chunksize(chunksize: int, sizes: list[int]) -> None:
    run = MapRun([list(range(10))], chunksize, True, Clock())
    units = _drain(run)
    assert [u.n for u in units] == sizes
    for unit in units:
        _answer(unit)
    assert run.finished
    assert run.outcome() == [10 * x for x in range(10)]


def test_a_serialiser_that_cannot_batch_sends_one_call_per_item() -> None:
    run = MapRun([list(range(10))], None, False, Clock())
    units = _drain(run)
    assert [u.n for u in units] == [1] * B.WINDOW


def test_the_first_failure_in_item_order_wins_and_stops_sending() -> None:
    run = MapRun([list(range(100))], 10, True, Clock())
    units = _drain(run)
    assert len(units) == 10
    _answer(units[5], fail_at=57)
    _answer(units[2], fail_at=23)  # earlier, though it came later
    for unit in units[:2] + units[3:5] + units[6:]:
        assert not run.finished  # the frames in flight are waited for
        _answer(unit)
    assert run.finished
    assert run.results[22] == 220  # the items before the failure in its batch
    with pytest.raises(ValueError, match=r"^23$"):
        run.outcome()


def test_no_frame_is_sent_after_a_failure() -> None:
    run = MapRun([list(range(100))], None, True, Clock())
    first = _drain(run)
    _answer(first[0], fail_at=0)
    assert run.next_unit() is None  # three still in flight, none more sent
    for unit in first[1:]:
        _answer(unit)
    assert run.finished
    with pytest.raises(ValueError, match=r"^0$"):
        run.outcome()


def test_a_frame_that_cannot_be_sent_fails_at_its_first_item() -> None:
    run = MapRun([list(range(10))], 4, True, Clock())
    units = _drain(run)
    _answer(units[0])
    run.unsent(units[1], KeyError("unsendable"))
    _answer(units[2])
    assert run.finished
    assert run.error_at == 4
    with pytest.raises(KeyError):
        run.outcome()


def test_a_dead_worker_fails_the_frame_at_its_first_item() -> None:
    run = MapRun([list(range(10))], 5, True, Clock())
    a, b = _drain(run)
    b.set_exception(OSError("died"))
    a.set_exception(OSError("died first"))
    with pytest.raises(OSError, match="died first"):
        run.outcome()


def test_several_columns_and_one_call_frames() -> None:
    run = MapRun([[1, 2, 3], ["a", "b", "c", "d"]], 2, True, Clock())
    assert run.n == 3
    first, second = _drain(run)
    assert run.batch(first) == [[1, 2], ["a", "b"]]
    assert second.n == 1
    assert run.args(second) == (3, "c")


def test_an_empty_map_is_finished_at_once() -> None:
    run = MapRun([[]], None, True, Clock())
    assert run.finished
    assert run.next_unit() is None
    assert run.outcome() == []


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True, "2"])
def test_bad_chunksize(chunksize: Any) -> None:
    with pytest.raises(ValueError, match="chunksize is a positive int or None"):
        MapRun([[1]], chunksize, True, Clock())


@given(
    st.integers(0, 300),
    st.one_of(st.none(), st.integers(1, 50)),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 299)),
    st.randoms(use_true_random=False),
)
def test_any_answer_order_gives_the_results_in_order_or_the_first_error(
    n: int, chunksize: int | None, batchable: bool, fail_at: int | None, rnd: Any
) -> None:
    clock = Clock()
    run = MapRun([list(range(n))], chunksize, batchable, clock)
    in_flight: list[Unit] = []
    while not run.finished:
        in_flight += _drain(run)
        assert in_flight, "nothing in flight, nothing to send, not finished"
        unit = in_flight.pop(rnd.randrange(len(in_flight)))
        clock.now += rnd.random() / 100
        _answer(unit, fail_at)
    if fail_at is not None and fail_at < n:
        with pytest.raises(ValueError, match=rf"^{fail_at}$"):
            run.outcome()
        # Every item before it was sent (in order, before its frame) and answered.
        assert run.results[:fail_at] == [10 * x for x in range(fail_at)]
    else:
        assert run.outcome() == [10 * x for x in range(n)]


@pytest.mark.parametrize("module", ["_batching", "_map", "_answers"])
def test_pure_modules_import_no_io_and_no_clock(module: str) -> None:
    """The sizer and a map's bookkeeping are shared with the pools: no socket, clock, thread
    or event loop in them (times are passed in)."""
    import ast
    from pathlib import Path

    import anyfork._rpc

    path = Path(anyfork._rpc.__file__).parent / f"{module}.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.partition(".")[0])
    banned = {"asyncio", "socket", "select", "selectors", "time", "threading", "os"}
    assert not imported & banned, f"{module} imports {sorted(imported & banned)}"


def test_a_window_per_slot_of_the_worker() -> None:
    run = MapRun([list(range(1000))], None, True, Clock(), slots=3)
    assert len(_drain(run)) == 3 * B.WINDOW
