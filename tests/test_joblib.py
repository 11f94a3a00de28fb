"""anyfork.joblib: joblib's ``"anyfork"`` backend, with real joblib and real workers."""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from joblib import Parallel, delayed

import anyfork
import anyfork.joblib
import joblib_funcs as jf


@pytest.fixture(autouse=True)
def shared_template() -> Iterator[None]:
    """The backend's own template lives on between calls; each test closes it (and waits for
    it, so that the leak check finds it gone)."""
    yield
    anyfork.joblib.close()


def test_results_in_order_from_workers_forked_from_the_shared_template() -> None:
    with joblib.parallel_config(backend="anyfork", n_jobs=2):
        assert Parallel()(delayed(jf.square)(i) for i in range(50)) == [i * i for i in range(50)]
        where = Parallel()(delayed(jf.whereami)(i) for i in range(4))
    pids = {pid for pid, _ in where}
    parents = {ppid for _, ppid in where}
    assert os.getpid() not in pids
    shared = anyfork.joblib._shared
    assert shared is not None
    assert parents == {shared.wait_started_blocking(timeout=30)}


def test_a_template_of_the_users_with_modules_preloaded() -> None:
    tmpl = anyfork.joblib.template("colorsys")
    try:
        with joblib.parallel_config(backend="anyfork", n_jobs=2, template=tmpl):
            loaded = Parallel()(delayed(jf.has_module)("colorsys") for _ in range(3))
            where = Parallel()(delayed(jf.whereami)(i) for i in range(2))
        assert loaded == [True] * 3
        assert {ppid for _, ppid in where} == {tmpl.wait_started_blocking(timeout=30)}
    finally:
        tmpl.close()


def test_many_small_tasks_are_batched_and_generators_work() -> None:
    with Parallel(n_jobs=2, backend="anyfork", return_as="generator") as parallel:
        gen = parallel(delayed(jf.square)(i) for i in range(2000))
        assert sum(gen) == sum(i * i for i in range(2000))
        # joblib's auto-batching grew the batches (one call each) past one task
        backend = parallel._backend
        assert isinstance(backend, anyfork.joblib.AnyforkBackend)
        assert backend.compute_batch_size() > 1


def test_lambdas_and_closures_travel_with_cloudpickle() -> None:
    offset = 10
    with joblib.parallel_config(backend="anyfork", n_jobs=2):
        assert Parallel()(delayed(lambda x: x + offset)(i) for i in range(5)) == list(range(10, 15))


def test_a_task_error_keeps_its_type_and_the_backend_stays_usable() -> None:
    """After an error inside ``with Parallel(...) as parallel`` the backend takes the next call
    (``abort_everything(ensure_ready=True)`` opened a new executor).  The next call is made by a
    new ``Parallel`` on the same backend: joblib 1.6 itself may hand a result of the aborted
    call to the next call of the same ``Parallel`` object (its callback thread dispatches a
    batch while the call is being aborted): with loky, 15 of 15 such reuses returned a stale
    result here, with this backend 7 of 15."""
    with Parallel(n_jobs=2, backend="anyfork") as parallel:
        with pytest.raises(KeyError, match="item 3") as info:
            parallel(delayed(jf.fail_at)(i, 3) for i in range(10))
        assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
        backend = parallel._backend
        assert Parallel(n_jobs=2, backend=backend)(delayed(jf.square)(i) for i in range(4)) == [
            0,
            1,
            4,
            9,
        ]


def test_an_error_cancels_the_tasks_not_started_without_waiting_for_running_ones(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    done = tmp_path / "done"
    done.mkdir()
    n = 200
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # every task but item 0 waits for this
        with pytest.raises(ValueError, match="item 0"):
            Parallel(n_jobs=2, backend="anyfork", batch_size=1)(
                delayed(jf.fail_or_wait)(i, str(lock), str(done)) for i in range(n)
            )
        # Parallel raised while a worker was still blocked: the abort did not wait for it
    # released: the running tasks finish (the leak check waits for their workers' exit)
    from helpers import eventually

    ran = eventually(lambda: len(list(done.iterdir())) >= 1, timeout=30, what="a task to run")
    assert ran
    assert len(list(done.iterdir())) < n - 1  # the rest were never run


def test_a_killed_worker_fails_its_batch_with_worker_died() -> None:
    with pytest.raises(anyfork.WorkerDiedError) as info:
        Parallel(n_jobs=2, backend="anyfork", batch_size=1)(delayed(jf.die)(i) for i in range(4))
    assert isinstance(info.value, cf.process.BrokenProcessPool)
    assert info.value.signal == 9


def test_one_job_runs_sequentially_in_this_process() -> None:
    where = Parallel(n_jobs=1, backend="anyfork")(delayed(jf.whereami)(i) for i in range(2))
    assert {pid for pid, _ in where} == {os.getpid()}


def test_n_jobs_arguments() -> None:
    backend = anyfork.joblib.AnyforkBackend()
    assert backend.effective_n_jobs(3) == 3
    assert backend.effective_n_jobs(None) == 1
    assert backend.effective_n_jobs(-1) == len(os.sched_getaffinity(0))
    assert backend.effective_n_jobs(-1000) == 1
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)


def test_bad_backend_arguments() -> None:
    with pytest.raises(ValueError, match="inner_max_num_threads"):
        anyfork.joblib.AnyforkBackend(inner_max_num_threads=2)
    with pytest.raises(TypeError, match="template must be an anyfork Process"):
        anyfork.joblib.AnyforkBackend(template="numpy")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not configured"):
        anyfork.joblib.AnyforkBackend().submit(lambda: None)


def test_close_is_idempotent_and_a_later_call_makes_a_new_template() -> None:
    with joblib.parallel_config(backend="anyfork", n_jobs=2):
        first = {ppid for _, ppid in Parallel()(delayed(jf.whereami)(i) for i in range(2))}
        anyfork.joblib.close()
        anyfork.joblib.close()
        second = {ppid for _, ppid in Parallel()(delayed(jf.whereami)(i) for i in range(2))}
    assert len(first) == len(second) == 1
    assert first != second


def test_a_scikit_learn_estimator_with_n_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import make_classification
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    batches: list[object] = []
    submit = anyfork.joblib.AnyforkBackend.submit

    def counted(self: anyfork.joblib.AnyforkBackend, func: Any, callback: Any = None) -> Any:
        batches.append(func)
        return submit(self, func, callback)

    monkeypatch.setattr(anyfork.joblib.AnyforkBackend, "submit", counted)
    x, y = make_classification(n_samples=200, n_features=8, random_state=0)
    tmpl = anyfork.joblib.template("numpy", "sklearn.tree", "sklearn.model_selection")
    try:
        with joblib.parallel_config(backend="anyfork", template=tmpl):
            scores = cross_val_score(DecisionTreeClassifier(random_state=0), x, y, cv=4, n_jobs=2)
    finally:
        tmpl.close()
    same = cross_val_score(DecisionTreeClassifier(random_state=0), x, y, cv=4, n_jobs=1)
    assert list(scores) == list(same)
    assert batches  # the folds ran in anyfork workers
