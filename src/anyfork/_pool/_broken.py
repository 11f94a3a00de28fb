"""Pool failures that are also the standard library's ``BrokenProcessPool``, so that code written
for ``ProcessPoolExecutor`` keeps working (although the pool is not broken: it replaces the
worker).  Imported on the failure paths only: ``concurrent.futures.process`` brings
``multiprocessing`` with it."""

from __future__ import annotations

import contextlib
from concurrent.futures.process import BrokenProcessPool

from .._errors import WorkerDiedError as _WorkerDiedError


class WorkerDiedError(_WorkerDiedError, BrokenProcessPool):
    """A pool worker died while it ran the call (``anyfork.WorkerDiedError``, and the stdlib's
    ``BrokenProcessPool``: the call failed because its process did)."""


def died(exc: _WorkerDiedError) -> _WorkerDiedError:
    """``exc`` as a pool's worker death (also a ``BrokenProcessPool``)."""
    if isinstance(exc, BrokenProcessPool):
        return exc
    new = WorkerDiedError(str(exc), exc.pid, exc.returncode)
    new.__cause__, new.__context__ = exc.__cause__, exc.__context__
    new.__suppress_context__ = exc.__suppress_context__
    new.__traceback__ = exc.__traceback__
    return new


_BROKEN: dict[type[BaseException], type[BaseException]] = {}


def also_broken(exc: BaseException) -> BaseException:
    """An executor's worker could not start: its error (its own type, and an ``AnyforkError``)
    is also a ``BrokenProcessPool``, as the standard library's executors report a failed
    initializer.  Unchanged if it is one already, or its type cannot be subclassed."""
    if isinstance(exc, BrokenProcessPool) or not isinstance(exc, Exception):
        return exc
    cls: type[BaseException] = type(exc)
    with contextlib.suppress(TypeError):  # (either step)
        broken = _BROKEN.get(cls)
        if broken is None:
            namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
            broken = _BROKEN[cls] = type(cls.__name__, (cls, BrokenProcessPool), namespace)
        exc.__class__ = broken  # type: ignore[assignment]  # a subclass of its own type
    return exc
