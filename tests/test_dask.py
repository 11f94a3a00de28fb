"""PoolExecutor driving Dask's local schedulers, and asyncio's run_in_executor."""

from __future__ import annotations

import asyncio
import math
import os

import dask.bag
import pytest
from dask.base import compute
from dask.delayed import delayed as dask_delayed

import anyfork
import dask_funcs as df


def test_dask_processes_scheduler_with_the_executor_as_its_pool() -> None:
    with anyfork.PoolExecutor(2) as executor:
        assert executor._max_workers == 2  # what Dask reads for its number of workers
        bag = dask.bag.from_sequence(range(20), npartitions=4).map(df.inc)
        (total,) = compute(bag.sum(), scheduler="processes", pool=executor)
        assert total == sum(range(1, 21))
        pids = dask.bag.from_sequence(range(8), npartitions=4).map(df.pid)
        (seen,) = compute(pids, scheduler="processes", pool=executor)
    assert os.getpid() not in seen
    assert 1 <= len(set(seen)) <= 2


def test_the_executor_as_dask_scheduler_with_cloudpickle_for_lambdas() -> None:
    with anyfork.PoolExecutor(2, serializer="cloudpickle") as executor:
        bag = dask.bag.from_sequence(range(10), npartitions=3).map(lambda x: x * x)
        assert bag.sum().compute(scheduler=executor) == sum(x * x for x in range(10))
        delayed = [dask_delayed(df.inc)(i) for i in range(4)]
        assert compute(*delayed, scheduler=executor) == (1, 2, 3, 4)


def test_a_task_error_reaches_dask_with_its_type() -> None:
    with anyfork.PoolExecutor(2) as executor:
        bag = dask.bag.from_sequence(range(4), npartitions=2).map(df.fail)
        with pytest.raises(ZeroDivisionError, match="item"):
            compute(bag, scheduler="processes", pool=executor)
        # the executor keeps serving
        (total,) = compute(
            dask.bag.from_sequence([1], npartitions=1).map(df.inc).sum(),
            scheduler="processes",
            pool=executor,
        )
        assert total == 2


def test_run_in_executor() -> None:
    async def main(executor: anyfork.PoolExecutor) -> list[int]:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(executor, math.factorial, n) for n in range(6)]
        return await asyncio.wait_for(asyncio.gather(*futures), 60)

    with anyfork.PoolExecutor(2) as executor:
        assert asyncio.run(main(executor)) == [1, 1, 2, 6, 24, 120]
