"""CPython's generic executor tests (``Lib/test/test_concurrent_futures/``: executor.py,
test_wait.py, test_as_completed.py, test_shutdown.py, test_init.py, test_deadlock.py, and the
process-pool ones of test_process_pool.py), adapted to run on ``anyfork.PoolExecutor`` with the
same standard arguments: ``PoolExecutor(max_workers=5)`` as their ``ExecutorMixin`` makes it.

Each test names its CPython original.  Adapted, not copied: pytest style; where CPython sleeps
in a worker so that a call is still running when it looks, the call waits on the gate
(``cf_funcs.blocked``, released by the test); where CPython sleeps or polls in the test, a
handshake or the executor's own ``wait_until``.  The functions live in ``cf_funcs`` (workers
import them by name).

Deviations on purpose (anyfork's documented behaviour), each said where it applies:

* a worker that dies fails only its calls (with an exception that is ``BrokenProcessPool`` and
  ``anyfork.WorkerDiedError``); the executor replaces it and keeps serving (CPython: the whole
  executor is broken);
* ``SystemExit`` in a worker (``sys.exit`` in the function, or while its arguments or result
  are unpickled there) ends that worker like any program: its call fails as a death;
* arguments or results that cannot be pickled fail the call with ``anyfork.EncodeError`` /
  ``DecodeError`` (the pickling error as its cause), not the pickling error itself, and break
  nothing;
* a failing initializer does not break the executor for good (the next call tries a new worker)
  and is not logged in the worker: its exception reaches the futures waiting for a worker.

Not adapted: the tests of ``as_completed``/``wait`` on hand-made futures alone (no executor
involved), the thread-pool-only ones, ``FailingInitializerResourcesTest`` (multiprocessing's
resource tracker, which anyfork does not use) and ``test_gh105829`` (it patches
``ProcessPoolExecutor``'s internal manager thread), ``test_python_finalization_error`` (idem).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures._base import (
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    Future,
)
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import anyfork
import cf_funcs
from cf_funcs import mul
from helpers import WAIT, Gate, alive

WORKERS = 5
TESTS = str(Path(__file__).resolve().parent)
SRC = str(Path(anyfork.__file__).resolve().parent.parent)


def create_future(state: str = PENDING, exception: Any = None, result: Any = None) -> Future[Any]:
    f: Future[Any] = Future()
    f._state = state  # as CPython's util.create_future
    f._exception = exception
    f._result = result
    return f


CANCELLED_AND_NOTIFIED_FUTURE = create_future(state=CANCELLED_AND_NOTIFIED)
EXCEPTION_FUTURE = create_future(state=FINISHED, exception=OSError())
SUCCESSFUL_FUTURE = create_future(state=FINISHED, result=42)
CANCELLED_FUTURE = create_future(state="CANCELLED")


def make(gate: Gate, max_workers: int = WORKERS, **kwargs: Any) -> anyfork.PoolExecutor:
    """The executor of CPython's ``ExecutorMixin`` (``max_workers=5``), its workers holding
    the gate."""
    return anyfork.PoolExecutor(
        max_workers,
        template=gate.template(),
        init="pool_funcs:init_gate",
        on_event=gate.on_event,
        **kwargs,
    )


def finish(ex: anyfork.PoolExecutor) -> None:
    """CPython's ``tearDown`` (``shutdown(wait=True)``), with a deadline."""
    ex._engine.close(timeout=WAIT)


@pytest.fixture
def executor(gate: Gate) -> Iterator[anyfork.PoolExecutor]:
    ex = make(gate)
    try:
        yield ex
    finally:
        finish(ex)


def collect(items: Any, out: Any) -> None:
    """Take ``items`` into ``out`` (a list or a set) until they end or raise."""
    add = out.append if isinstance(out, list) else out.add
    for item in items:
        add(item)


def python(code: str) -> subprocess.CompletedProcess[bytes]:
    """``assert_python_ok``: run ``code`` in a fresh interpreter (with a deadline)."""
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join((SRC, TESTS)))
    environ.pop("ANYFORK_PYTHON", None)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=environ, timeout=WAIT * 2
    )


# -- executor.py: ExecutorTest -------------------------------------------------------------------


def test_submit(executor: anyfork.PoolExecutor) -> None:
    """test_submit"""
    future = executor.submit(pow, 2, 8)
    assert future.result() == 256


def test_submit_keyword(executor: anyfork.PoolExecutor) -> None:
    """test_submit_keyword"""
    future = executor.submit(mul, 2, y=8)
    assert future.result() == 16
    future = executor.submit(cf_funcs.capture, 1, self=2, fn=3)
    assert future.result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=cf_funcs.capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_map(executor: anyfork.PoolExecutor) -> None:
    """test_map"""
    assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == list(
        map(pow, range(10), range(10))
    )


def test_map_exception(executor: anyfork.PoolExecutor) -> None:
    """test_map_exception"""
    i = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_timeout(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_map_timeout: the third call runs until the test opens the gate (CPython: it
    sleeps 6 s), so the map times out at it, after the two results before it."""
    list(executor.map(mul, range(WORKERS), range(WORKERS)))  # the workers are up
    results: list[Any] = []
    with pytest.raises(cf.TimeoutError):
        collect(executor.map(cf_funcs.sleep, [0, 0, 6], timeout=2, chunksize=1), results)
    assert results == [None, None]
    gate.wait_started(1)
    gate.release(1)


def test_shutdown_race_issue12456(executor: anyfork.PoolExecutor) -> None:
    """test_shutdown_race_issue12456"""
    executor.map(str, [2] * (WORKERS + 1))
    executor.shutdown()


def test_no_stale_references(executor: anyfork.PoolExecutor) -> None:
    """test_no_stale_references: a finished call's function (a bound method) is collected
    once the caller drops its future, without the garbage collector (refcounts alone)."""
    my_object = cf_funcs.MyObject()
    collected = threading.Event()
    ref = weakref.ref(my_object, lambda obj: collected.set())
    future = executor.submit(my_object.my_method)
    future.result(WAIT)
    del my_object, future
    assert collected.wait(WAIT), "stale reference not collected"
    assert ref() is None


def test_max_workers_negative() -> None:
    """test_max_workers_negative"""
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            anyfork.PoolExecutor(max_workers=number)


def test_free_reference(executor: anyfork.PoolExecutor) -> None:
    """test_free_reference: the result iterator keeps no reference to a result it gave."""
    for obj in executor.map(cf_funcs.make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        assert wr() is None


# -- test_process_pool.py: ProcessPoolExecutorTest ----------------------------------------------


def test_killed_child(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_killed_child.  Deviation: only the dead worker's call fails; the executor keeps
    serving (CPython: every later submit raises BrokenProcessPool)."""
    future = executor.submit(cf_funcs.blocked, "victim")
    ((_, pid),) = gate.wait_started(1)
    os.kill(pid, 9)
    with pytest.raises(BrokenProcessPool):
        future.result(WAIT)
    assert executor.submit(pow, 2, 8).result(WAIT) == 256


def test_map_chunksize(executor: anyfork.PoolExecutor) -> None:
    """test_map_chunksize"""
    ref = list(map(pow, range(40), range(40)))
    for chunksize in (6, 50, 40):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == ref
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        list(executor.map(pow, range(40), range(40), chunksize=-1))


def test_traceback(executor: anyfork.PoolExecutor) -> None:
    """test_traceback: the worker's traceback is the exception's cause, its text ``.tb``
    (CPython's cause is its private ``_RemoteTraceback``; anyfork's ``RemoteTraceback``)."""
    future = executor.submit(cf_funcs.RemoteFailure.raise_it)
    with pytest.raises(Exception) as info:  # noqa: PT011 - the exact type is checked next
        future.result()
    exc = info.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert isinstance(cause, anyfork.RemoteTraceback)
    assert "raise RuntimeError(123)  # some comment" in cause.tb
    import traceback

    assert "raise RuntimeError(123)  # some comment" in "".join(traceback.format_exception(exc))


def test_ressources_gced_in_workers(executor: anyfork.PoolExecutor) -> None:
    """test_ressources_gced_in_workers: a Manager's proxy passed as an argument works in the
    worker (it has the parent's authkey), and the argument is collected there after the call."""
    with multiprocessing.get_context("fork").Manager() as mgr:
        obj = cf_funcs.EventfulGCObj(mgr)
        future = executor.submit(id, obj)
        future.result(WAIT)
        assert obj.event.wait(timeout=WAIT)
        del obj


def test_saturation(gate: Gate) -> None:
    """test_saturation: calls queued beyond the workers start every worker at once."""
    ex = make(gate)
    try:
        futures = [ex.submit(cf_funcs.blocked, i) for i in range(15 * WORKERS)]
        assert ex.statistics().workers == WORKERS  # all started at the first submits
        gate.release(15 * WORKERS)
        assert len(list(cf.as_completed(futures, timeout=WAIT))) == 15 * WORKERS
    finally:
        finish(ex)


def test_idle_process_reuse_one(executor: anyfork.PoolExecutor) -> None:
    """test_idle_process_reuse_one"""
    executor.submit(mul, 21, 2).result()
    executor.submit(mul, 6, 7).result()
    executor.submit(mul, 3, 14).result()
    assert executor.statistics().started == 1


def test_idle_process_reuse_multiple(executor: anyfork.PoolExecutor) -> None:
    """test_idle_process_reuse_multiple"""
    executor.submit(mul, 12, 7).result()
    executor.submit(mul, 33, 25)
    executor.submit(mul, 25, 26).result()
    executor.submit(mul, 18, 29)
    executor.submit(mul, 1, 2).result()
    executor.submit(mul, 0, 9)
    assert executor.statistics().started <= 3
    executor.shutdown()


def test_max_tasks_per_child(gate: Gate) -> None:
    """test_max_tasks_per_child (any start method: workers are forked from a template)"""
    ex = make(gate, 1, max_tasks_per_child=3)
    try:
        original = ex.submit(os.getpid).result()
        assert ex.submit(os.getpid).result() == original
        assert ex.submit(os.getpid).result() == original
        new = ex.submit(os.getpid).result()
        assert new != original
        assert ex.statistics().workers == 1
    finally:
        finish(ex)


def test_max_tasks_early_shutdown(gate: Gate) -> None:
    """test_max_tasks_early_shutdown"""
    ex = make(gate, 3, max_tasks_per_child=1)
    futures = [ex.submit(mul, i, i) for i in range(6)]
    ex.shutdown()
    for i, future in enumerate(futures):
        assert future.result() == mul(i, i)


# -- test_wait.py: WaitTests ---------------------------------------------------------------------


def test_20369(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_20369"""
    future = executor.submit(cf_funcs.blocked)
    gate.release(1)
    done, not_done = cf.wait([future, future], return_when=cf.ALL_COMPLETED)
    assert done == {future}
    assert not_done == set()


def test_first_completed(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_first_completed"""
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(cf_funcs.blocked)
    done, not_done = cf.wait([CANCELLED_FUTURE, future1, future2], return_when=cf.FIRST_COMPLETED)
    assert done == {future1}
    assert not_done == {CANCELLED_FUTURE, future2}
    gate.release(1)


def test_first_completed_some_already_completed(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_first_completed_some_already_completed"""
    future1 = executor.submit(cf_funcs.blocked)
    finished, pending = cf.wait(
        [CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE, future1],
        return_when=cf.FIRST_COMPLETED,
    )
    assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE}
    assert pending == {future1}
    gate.release(1)


def test_first_exception(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_first_exception: the call that raises does so at once (CPython: after a sleep
    shorter than the third call's); the third runs until the gate opens."""
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(cf_funcs._raise_error, Exception)
    future3 = executor.submit(cf_funcs.blocked, 3)
    finished, pending = cf.wait([future1, future2, future3], return_when=cf.FIRST_EXCEPTION)
    assert finished == {future1, future2}
    assert pending == {future3}
    gate.release(1)


def test_first_exception_some_already_complete(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_first_exception_some_already_complete"""
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(cf_funcs.blocked)
    finished, pending = cf.wait(
        [SUCCESSFUL_FUTURE, CANCELLED_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1, future2],
        return_when=cf.FIRST_EXCEPTION,
    )
    assert finished == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1}
    assert pending == {CANCELLED_FUTURE, future2}
    gate.release(1)


def test_first_exception_one_already_failed(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_first_exception_one_already_failed"""
    future1 = executor.submit(cf_funcs.blocked)
    finished, pending = cf.wait([EXCEPTION_FUTURE, future1], return_when=cf.FIRST_EXCEPTION)
    assert finished == {EXCEPTION_FUTURE}
    assert pending == {future1}
    gate.release(1)


def test_all_completed(executor: anyfork.PoolExecutor) -> None:
    """test_all_completed"""
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(mul, 2, 21)
    finished, pending = cf.wait(
        [SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, future1, future2],
        return_when=cf.ALL_COMPLETED,
    )
    assert finished == {
        SUCCESSFUL_FUTURE,
        CANCELLED_AND_NOTIFIED_FUTURE,
        EXCEPTION_FUTURE,
        future1,
        future2,
    }
    assert pending == set()


def test_timeout(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_timeout"""
    future = executor.submit(cf_funcs.blocked)
    finished, pending = cf.wait(
        [CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future],
        timeout=0.05,
        return_when=cf.ALL_COMPLETED,
    )
    assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    assert pending == {future}
    gate.release(1)


# -- test_as_completed.py: AsCompletedTests ------------------------------------------------------


def test_no_timeout(executor: anyfork.PoolExecutor) -> None:
    """test_no_timeout"""
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(mul, 7, 6)
    completed = set(
        cf.as_completed(
            [
                CANCELLED_AND_NOTIFIED_FUTURE,
                EXCEPTION_FUTURE,
                SUCCESSFUL_FUTURE,
                future1,
                future2,
            ]
        )
    )
    assert completed == {
        CANCELLED_AND_NOTIFIED_FUTURE,
        EXCEPTION_FUTURE,
        SUCCESSFUL_FUTURE,
        future1,
        future2,
    }


def test_future_times_out(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_future_times_out"""
    already_completed = {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    for i, timeout in enumerate((0, 0.1)):
        completed_futures: set[Any] = set()
        future = executor.submit(cf_funcs.blocked)
        with pytest.raises(cf.TimeoutError):
            collect(cf.as_completed(already_completed | {future}, timeout), completed_futures)
        assert completed_futures == already_completed
        gate.wait_started(i + 1)  # the byte is for this call, not the next one
        gate.release(1)


def test_duplicate_futures(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_duplicate_futures"""
    future1 = executor.submit(cf_funcs.blocked)
    gate.release(1)
    completed = list(cf.as_completed(itertools.repeat(future1, 3)))
    assert len(completed) == 1


# -- test_shutdown.py: ExecutorShutdownTest and ProcessPoolShutdownTest -----------------------


def test_run_after_shutdown(executor: anyfork.PoolExecutor) -> None:
    """test_run_after_shutdown"""
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(pow, 2, 5)


def test_interpreter_shutdown() -> None:
    """test_interpreter_shutdown: a call still queued at exit runs (and prints)."""
    result = python(
        "import anyfork, cf_funcs\nt = anyfork.PoolExecutor(5)\nt.submit(cf_funcs.say, 'apple')\n"
    )
    assert result.stderr == b""
    assert result.stdout.strip() == b"apple"


def test_submit_after_interpreter_shutdown() -> None:
    """test_submit_after_interpreter_shutdown"""
    result = python(
        "import atexit\n"
        "@atexit.register\n"
        "def run_last():\n"
        "    try:\n"
        "        t.submit(id, None)\n"
        "    except RuntimeError:\n"
        "        print('runtime-error')\n"
        "        raise\n"
        "import anyfork\n"
        "t = anyfork.PoolExecutor(5)\n"
    )
    assert "RuntimeError: cannot schedule new futures after interpreter shutdown" in (
        result.stderr.decode()
    )
    assert result.stdout.strip() == b"runtime-error"


def test_hang_issue12364(executor: anyfork.PoolExecutor) -> None:
    """test_hang_issue12364"""
    fs = [executor.submit(mul, i, 2) for i in range(50)]
    executor.shutdown()
    for f in fs:
        f.result()


def test_cancel_futures(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_cancel_futures: the running calls wait on the gate (CPython: they sleep), so the
    queued ones are still queued when ``shutdown(cancel_futures=True)`` comes."""
    fs = [executor.submit(cf_funcs.blocked, i) for i in range(50)]
    gate.wait_started(WORKERS)
    executor.shutdown(wait=False, cancel_futures=True)
    cancelled = [fut for fut in fs if fut.cancelled()]
    assert len(cancelled) > 20
    gate.release(50)
    executor.shutdown(wait=True)
    others = [fut for fut in fs if not fut.cancelled()]
    for fut in others:
        assert fut.done()
        assert fut.exception() is None
    assert len(others) > 0


def test_hang_gh83386() -> None:
    """test_hang_gh83386: ``shutdown(wait=False)`` does not hang at exit with a running call
    (CPython skips this test for ProcessPoolExecutor: it hangs there)."""
    result = python(
        "import anyfork, cf_funcs\n"
        "t = anyfork.PoolExecutor(max_workers=3)\n"
        "t.submit(cf_funcs.say, 'apple')\n"
        "t.shutdown(wait=False)\n"
    )
    assert result.stderr == b""
    assert result.stdout.strip() == b"apple"


def test_hang_gh94440() -> None:
    """test_hang_gh94440: shutdown right after a cancelled submit does not hang (a deadline on
    a thread instead of CPython's alarm)."""
    executor = anyfork.PoolExecutor(max_workers=1)
    executor.submit(int).result()
    executor.submit(int).cancel()
    closer = threading.Thread(target=executor.shutdown, kwargs={"wait": True})
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "shutdown hung"


def test_processes_terminate(executor: anyfork.PoolExecutor, gate: Gate) -> None:
    """test_processes_terminate (its workers are known by pid, not ``_processes``)"""
    for i in range(3):
        executor.submit(cf_funcs.blocked, i)
    pids = [pid for _, pid in gate.wait_started(3)]
    assert executor.statistics().workers == 3  # started on demand
    gate.release(3)
    executor.shutdown()
    assert not any(alive(pid) for pid in pids)


def test_context_manager_shutdown() -> None:
    """test_context_manager_shutdown"""
    with anyfork.PoolExecutor(max_workers=5) as e:
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        pids = e.worker_pids()
    assert pids
    assert not any(alive(pid) for pid in pids)


def test_del_shutdown() -> None:
    """test_del_shutdown.  Deviation: an executor dropped without ``shutdown`` is shut down at
    exit (as one never shut down is), not when it is collected; its calls still run."""
    executor = anyfork.PoolExecutor(max_workers=5)
    res = executor.map(abs, range(-5, 5))
    engine = executor._engine
    del executor
    assert all(r == abs(v) for r, v in zip(res, range(-5, 5), strict=True))
    engine.close()


def test_shutdown_no_wait() -> None:
    """test_shutdown_no_wait: the results are there after ``shutdown(wait=False)``, and the
    workers and threads end (the leak check after every test)."""
    executor = anyfork.PoolExecutor(max_workers=5)
    res = executor.map(abs, range(-5, 5))
    executor.shutdown(wait=False)
    assert all(r == abs(v) for r, v in zip(res, range(-5, 5), strict=True))


# -- test_init.py: InitializerMixin, FailingInitializerMixin ----------------------------------


def test_initializer(gate: Gate) -> None:
    """InitializerMixin.test_initializer"""
    ex = make(gate, 2, initializer=cf_funcs.init, initargs=("initialized",))
    try:
        futures = [ex.submit(cf_funcs.get_init_status) for _ in range(2)]
        for f in futures:
            assert f.result() == "initialized"
    finally:
        finish(ex)


def test_failing_initializer(gate: Gate) -> None:
    """FailingInitializerMixin.test_initializer.  Deviation: the initializer's exception (a
    ``BrokenExecutor`` too) reaches the futures waiting for a worker, and is not logged in the
    worker; the executor is not broken for good (a later call tries a new worker)."""
    ex = make(gate, 2, initializer=cf_funcs.init_fail)
    try:
        future = ex.submit(cf_funcs.get_init_status)
        with pytest.raises(cf.BrokenExecutor) as info:
            future.result(WAIT)
        assert isinstance(info.value, ValueError)
        assert str(info.value) == "error in initializer"
        later = ex.submit(cf_funcs.get_init_status)
        with pytest.raises(cf.BrokenExecutor):
            later.result(WAIT)
    finally:
        finish(ex)


# -- test_deadlock.py: ExecutorDeadlockTest ------------------------------------------------------


def check_crash(error: type[BaseException], func: Any, *args: Any) -> BaseException:
    """CPython's ``_check_crash``: a new executor of 2 workers, one call that fails with
    ``error``, no deadlock (the deadline of ``result``), then a clean shutdown; the
    executor still serves after it (anyfork's deviation: it is not broken)."""
    executor = anyfork.PoolExecutor(max_workers=2)
    try:
        res = executor.submit(func, *args)
        with pytest.raises(error) as info:
            res.result(timeout=WAIT)
        assert executor.submit(mul, 6, 7).result(WAIT) == 42
    finally:
        executor._engine.close(timeout=WAIT)
    return info.value


def test_error_at_task_pickle() -> None:
    """test_error_at_task_pickle.  Deviation: ``EncodeError``, the ``PicklingError`` its
    cause."""
    err = check_crash(anyfork.EncodeError, id, cf_funcs.ErrorAtPickle())
    assert isinstance(err.__cause__, pickle.PicklingError)


def test_exit_at_task_unpickle() -> None:
    """test_exit_at_task_unpickle"""
    check_crash(BrokenProcessPool, id, cf_funcs.ExitAtUnpickle())


def test_error_at_task_unpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_error_at_task_unpickle.  Deviation: the call fails with ``DecodeError`` (side
    ``"child"``, naming the worker's ``UnpicklingError``); the worker and the executor live
    on."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    err = check_crash(anyfork.DecodeError, id, cf_funcs.ErrorAtUnpickle())
    assert "UnpicklingError" in str(err)


def test_crash_at_task_unpickle() -> None:
    """test_crash_at_task_unpickle"""
    check_crash(BrokenProcessPool, id, cf_funcs.CrashAtUnpickle())


def test_crash_during_func_exec_on_worker() -> None:
    """test_crash_during_func_exec_on_worker"""
    check_crash(BrokenProcessPool, cf_funcs._crash)


def test_exit_during_func_exec_on_worker() -> None:
    """test_exit_during_func_exec_on_worker.  Deviation: ``sys.exit`` ends the worker, so the
    call fails as a worker death (CPython: ``SystemExit`` travels back)."""
    check_crash(BrokenProcessPool, cf_funcs._exit)


def test_error_during_func_exec_on_worker() -> None:
    """test_error_during_func_exec_on_worker"""
    check_crash(RuntimeError, cf_funcs._raise_error, RuntimeError)


def test_crash_during_result_pickle_on_worker() -> None:
    """test_crash_during_result_pickle_on_worker"""
    check_crash(BrokenProcessPool, cf_funcs._return_instance, cf_funcs.CrashAtPickle)


def test_exit_during_result_pickle_on_worker() -> None:
    """test_exit_during_result_pickle_on_worker.  Deviation: a worker death (see
    test_exit_during_func_exec_on_worker)."""
    check_crash(BrokenProcessPool, cf_funcs._return_instance, cf_funcs.ExitAtPickle)


def test_error_during_result_pickle_on_worker() -> None:
    """test_error_during_result_pickle_on_worker.  Deviation: ``EncodeError`` (side
    ``"child"``), the worker's ``PicklingError`` named in it."""
    err = check_crash(anyfork.EncodeError, cf_funcs._return_instance, cf_funcs.ErrorAtPickle)
    assert "PicklingError" in str(err)


def test_error_during_result_unpickle_in_result_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_error_during_result_unpickle_in_result_handler.  Deviation: ``DecodeError`` for
    that call only (the ``UnpicklingError`` its cause)."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    err = check_crash(anyfork.DecodeError, cf_funcs._return_instance, cf_funcs.ErrorAtUnpickle)
    assert isinstance(err.__cause__, pickle.UnpicklingError)


def test_exit_during_result_unpickle_in_result_handler() -> None:
    """test_exit_during_result_unpickle_in_result_handler: the result's unpickling exits in
    the parent's thread that reads it; the call fails as its worker's death (the worker is
    killed: its connection is in an unknown state)."""
    check_crash(BrokenProcessPool, cf_funcs._return_instance, cf_funcs.ExitAtUnpickle)


def test_shutdown_deadlock() -> None:
    """test_shutdown_deadlock"""
    with anyfork.PoolExecutor(max_workers=2) as executor:
        f = executor.submit(cf_funcs._crash, 0.1)
        executor.shutdown(wait=True)
        with pytest.raises(BrokenProcessPool):
            f.result()


def test_shutdown_deadlock_pickle() -> None:
    """test_shutdown_deadlock_pickle.  Deviation: ``EncodeError`` (see
    test_error_at_task_pickle)."""
    with anyfork.PoolExecutor(max_workers=2) as executor:
        executor.submit(id, 42).result()
        f = executor.submit(id, cf_funcs.ErrorAtPickle())
        executor.shutdown(wait=False)
        with pytest.raises(anyfork.EncodeError):
            f.result()


def test_crash_big_data() -> None:
    """test_crash_big_data: a crash while a big argument is on its way."""
    data = "a" * (1 << 20)
    with anyfork.PoolExecutor(max_workers=2) as executor, pytest.raises(BrokenProcessPool):
        list(executor.map(cf_funcs._crash_with_data, [data] * 10))
