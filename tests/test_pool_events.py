"""What a pool passes through to its workers and its callers, on every face: a call's own
event handler (``Pool.call``/``BlockingPool.call(..., on_event=)``,
``PoolExecutor.submit_with(..., on_event=)``), ``done`` as ``rpc()`` runs it, and the warning
when ``progress=True`` cannot show a bar."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import anyfork
import pool_faces
from anyfork._pool import _map
from helpers import run
from pool_faces import Face

face = pool_faces.face  # the fixture: each test taking it runs on every face


def test_a_calls_events_go_to_its_own_handler_the_others_to_the_pools(face: Face) -> None:
    pools: list[tuple[Any, ...]] = []
    face.open(None, "pool_funcs:chatty", max=2, on_event=lambda *e: pools.append(e))
    mine: list[tuple[Any, ...]] = []
    theirs: list[tuple[Any, ...]] = []
    assert face.call_with_events("a", 3, on_event=lambda *e: mine.append(e)) == "a"
    assert face.call("b", 2) == "b"
    assert face.call_with_events("c", 1, on_event=lambda *e: theirs.append(e)) == "c"
    assert mine == [("a", 0), ("a", 1), ("a", 2)]  # each before its call returned
    assert theirs == [("c", 0)]
    face.close()
    assert pools == [("b", 0), ("b", 1)]


def test_done_runs_in_every_worker_as_rpc_runs_it(face: Face, tmp_path: Path) -> None:
    path = tmp_path / "done"
    tmpl = anyfork.new().require("pool_funcs").send_arg(str(path))
    try:
        face.open(
            tmpl,
            "pool_funcs:double",
            max=2,
            idle=2,
            init="pool_funcs:init_path",
            done="pool_funcs:done_mark",
        )
        assert face.map(range(4)) == [0, 2, 4, 6]
        face.wait_until(lambda s: s.starting == 0)  # every worker it started is known
        pids = face.worker_pids()
        face.close()
    finally:
        tmpl.close()
    assert sorted(map(int, path.read_text().split())) == sorted(pids)


@pytest.fixture
def no_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    monkeypatch.setattr(_map, "_warned", [])


@pytest.mark.usefixtures("no_tqdm")
def test_progress_true_without_tqdm_says_so_once() -> None:
    with anyfork.BlockingPool(None, "pool_funcs:double", max=1) as pool:
        with pytest.warns(RuntimeWarning, match="tqdm is not installed: no progress is shown"):
            assert list(pool.map(range(3), progress=True)) == [0, 2, 4]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert list(pool.map(range(3), progress=True)) == [0, 2, 4]  # once is enough

    async def main() -> list[Any]:
        async with anyfork.Pool(None, "pool_funcs:double", max=1) as pool:
            return [r async for r in pool.map(range(2), progress=True)]

    _map._warned.clear()  # Pool.map says it too
    with pytest.warns(RuntimeWarning, match="tqdm is not installed"):
        assert run(main()) == [0, 2]
