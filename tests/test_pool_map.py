"""Pool.map: results in order, bounded calls in flight, errors at their turn, early stop,
progress (callable hook and tqdm)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Iterator
from typing import Any

import pytest

import anyfork
from helpers import Gate, run
from test_pool import gated_pool, until


def test_map_in_order_zips_like_map() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:double", max=2, load=2) as pool:
            assert [r async for r in pool.map(range(50))] == [2 * i for i in range(50)]
            assert [r async for r in pool.map([])] == []
        async with anyfork.Pool(None, "pool_funcs:kwargs", max=2) as pool:
            out = [r async for r in pool.map("ab", [1, 2, 3])]
            assert out == [(["a", 1], {}), (["b", 2], {})]  # stops with the shortest

    run(main())


def test_map_bounds_calls_in_flight(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        async with pool:
            consumed: list[int] = []

            def lazy() -> Iterator[int]:
                for i in range(10):
                    consumed.append(i)
                    yield i

            results = pool.map(lazy(), max_in_flight=3, chunksize=1)
            first = asyncio.ensure_future(results.__anext__())
            await gate.wait_started_async(1)
            s = await until(pool, lambda s: s.busy == 1 and s.queued == 2)
            assert consumed == [0, 1, 2]  # the iterable is read lazily, 3 at a time
            assert s.queued == 2
            gate.release(1)
            assert (await first)[0] == 0
            s = pool.statistics()
            assert (s.busy, s.queued) == (1, 1)  # the generator waits at its yield
            assert consumed == [0, 1, 2]
            second = asyncio.ensure_future(results.__anext__())
            await until(pool, lambda s: s.queued == 2)  # asked for more: back to 3 in flight
            assert consumed == [0, 1, 2, 3]
            gate.release(9)
            assert (await second)[0] == 1
            rest = [tag async for tag, _ in results]
            assert rest == list(range(2, 10))

    run(main())


async def collect(results: AsyncIterable[Any], out: list[Any]) -> None:
    async for r in results:
        out.append(r)  # noqa: PERF401 - a comprehension would drop the items before an error


def test_map_raises_at_the_failed_items_turn() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:double", max=2) as pool:
            got: list[Any] = []
            with pytest.raises(TypeError):  # None * 2, raised in the worker
                await collect(pool.map([1, None, 3]), got)
            assert got == [2]  # the results before it came first
            with pytest.raises(ValueError, match="max_in_flight"):
                await collect(pool.map([1], max_in_flight=0), got)

    run(main())


def test_map_stopped_early_withdraws_queued_calls(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        async with pool:
            gate.release(2)
            got = []
            async with contextlib.aclosing(
                pool.map(range(100), max_in_flight=4, chunksize=1)
            ) as results:
                async for tag, _ in results:
                    got.append(tag)
                    if len(got) == 2:
                        break
            assert got == [0, 1]
            # The running call is left to finish (no worker killed), the queued ones are gone.
            s = await until(pool, lambda s: s.queued == 0)
            assert s.busy == 1
            gate.release(1)
            s = await until(pool, lambda s: s.busy == 0)
            assert s.died == 0
            assert s.calls == 3

    run(main())


def test_progress_hook_and_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        seen: list[tuple[int, int | None]] = []
        async with anyfork.Pool(None, "pool_funcs:double", max=2) as pool:
            out = [r async for r in pool.map(range(5), progress=lambda d, t: seen.append((d, t)))]
            assert out == [0, 2, 4, 6, 8]
            assert seen == [(i, 5) for i in range(1, 6)]
            seen.clear()
            gen = (i for i in range(3))
            assert [r async for r in pool.map(gen, progress=lambda d, t: seen.append((d, t)))]
            assert seen == [(1, None), (2, None), (3, None)]
            assert [r async for r in pool.map(range(7), progress=True)] == list(range(0, 14, 2))

    run(main())
    assert "7/7" in capsys.readouterr().err  # tqdm's bar
