"""A joblib parallel backend named ``"anyfork"``: joblib's tasks in workers forked from a template.

::

    import joblib
    import anyfork.joblib  # registers the backend

    with joblib.parallel_config(backend="anyfork", n_jobs=8):
        results = joblib.Parallel()(joblib.delayed(work)(x) for x in range(1000))

Each ``Parallel`` call (or ``with Parallel(...)`` block) gets a :class:`anyfork.PoolExecutor`
whose workers are forked from a template that has imported joblib already: by default one that
this module makes on first use and keeps, or the one you pass as ``template=`` (prepare it with
:func:`template` so that it has joblib and your heavy modules, numpy or scikit-learn say,
imported once and shared copy-on-write by every worker).  joblib's own auto-batching sizes the
batches; a batch travels as one call.

Tasks travel with ``cloudpickle`` (a joblib dependency), as loky sends them: functions defined
in ``__main__``, lambdas and closures work.  A task's exception is raised by ``Parallel`` with
its own type and the worker's traceback as ``__cause__``; the tasks not started yet are
cancelled.  A worker that dies fails its batch with :class:`anyfork.WorkerDiedError` (also a
``BrokenProcessPool``).  Importing this module imports joblib; nothing of it runs in a worker
except through joblib's own pickles.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from collections.abc import Callable
from typing import Any

import joblib
from joblib._parallel_backends import (  # joblib's documented base classes for backends
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from ._core._process import Process
from ._core._templates import new
from ._pool._blocking import PoolExecutor

__all__ = ["AnyforkBackend", "close", "register", "template"]

#: What a worker needs to load joblib's batches, imported once in the template.
PRELOAD = ("joblib.parallel", "cloudpickle")

_lock = threading.Lock()
_shared: Process | None = None


def template(*modules: str) -> Process:
    """A new template for joblib workers: joblib's modules and then ``modules`` imported.

    Pass it as ``template=`` to ``joblib.parallel_config(backend="anyfork", ...)``; you own it
    (``close()`` it when done: the workers already forked live on)::

        tmpl = anyfork.joblib.template("numpy", "sklearn.ensemble")
        with joblib.parallel_config(backend="anyfork", n_jobs=8, template=tmpl):
            ...

    Args:
        modules: module names to import in the template after joblib's.

    Raises:
        TypeError: a name that is not a non-empty ``str``.

    A module that cannot be imported fails the first worker's start instead (with
    ``ModuleNotFoundError``, also an ``AnyforkError``).
    """
    return new().require(*PRELOAD, *modules)


def _shared_template() -> Process:
    """The template this module makes on first use and keeps (made again if it has exited)."""
    global _shared
    with _lock:
        if _shared is None or _shared.poll() is not None:
            _shared = template()
        return _shared


def close() -> None:
    """Close the template this module made for itself (a later ``Parallel`` call makes a new
    one).  Workers forked from it live on until their executor shuts down.  Idempotent."""
    global _shared
    with _lock:
        tmpl, _shared = _shared, None
    if tmpl is not None:
        tmpl.close()


class AnyforkBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``"anyfork"`` backend (registered by importing :mod:`anyfork.joblib`).

    Args:
        nesting_level: set by joblib.
        inner_max_num_threads: refused unless ``None``: workers are forked from a template
            whose libraries may have started their thread pools already, so the environment
            variables loky sets would come too late (limit threads in the template instead,
            with ``threadpoolctl`` say).
        template: the process workers are forked from (see :func:`template`); default: one
            this module makes on first use and keeps (see :func:`close`).
        **options: passed to :class:`anyfork.PoolExecutor` (``serializer``, default
            ``"cloudpickle"``; ``max_tasks_per_child``, ``max_memory``, ``initializer``...).

    Raises:
        ValueError: ``inner_max_num_threads`` given; ``n_jobs == 0``.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    default_n_jobs = 1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        template: Process | None = None,
        **options: Any,
    ) -> None:
        if inner_max_num_threads is not None:
            raise ValueError(
                "the anyfork backend cannot set inner_max_num_threads: its workers are forked "
                "from a template whose libraries are loaded already; limit their threads in "
                "the template (threadpoolctl) instead"
            )
        super().__init__(nesting_level=nesting_level)
        if template is not None and not isinstance(template, Process):
            raise TypeError(f"template must be an anyfork Process, not {template!r}")
        options.setdefault("serializer", "cloudpickle")
        self._template = template
        self._options = options
        self._executor: PoolExecutor | None = None
        self.parallel: Any = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The number of workers for ``n_jobs``: negative counts from the CPUs this process
        may use (``-1``: all of them), ``None`` means 1, as for joblib's other backends.

        Raises:
            ValueError: ``n_jobs == 0``."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(len(os.sched_getaffinity(0)) + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Open the executor for a ``Parallel`` call and return its number of workers (one
        worker means joblib's sequential backend: no process at all)."""
        n = self.effective_n_jobs(n_jobs)
        if n == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._open(n)
        return n

    def _open(self, n: int) -> None:
        tmpl = self._template if self._template is not None else _shared_template()
        self._executor = PoolExecutor(n, template=tmpl, **self._options)

    def submit(
        self, func: Callable[[], Any], callback: Callable[[cf.Future[Any]], object] | None = None
    ) -> cf.Future[Any]:
        """Run ``func()`` (a joblib batch) in a worker; ``callback(future)`` when it is done."""
        if self._executor is None:
            raise RuntimeError("the anyfork backend is not configured (no Parallel call)")
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: cf.Future[Any]) -> Any:
        """The batch's results (or its exception, raised)."""
        return future.result()

    def terminate(self) -> None:
        """The end of a ``Parallel`` call: shut the executor down, its workers exit."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed (or the wait was interrupted): cancel the batches not started, let
        the running ones finish in the background, and open a new executor if asked."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


def register() -> None:
    """Register the ``"anyfork"`` backend with joblib (importing this module does it)."""
    joblib.register_parallel_backend("anyfork", AnyforkBackend)


register()
