"""How the threads engine closes: the graceful way (queued calls run, workers stop, threads
end), the fast way (workers killed, queued calls failed), and interrupted (``KeyboardInterrupt``
in a caller's wait: what is pending is cancelled, the busy workers killed, the pool stays
open).  A part of ``_threads.ThreadsEngine``, kept apart to keep each module readable."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

from .._errors import ClosedError
from . import _daemon, _watch
from ._engine import Engine
from ._futures import Call, ThreadWorker, drain, fail, remaining
from ._map import MapJob
from ._watch import Changes, Watcher
from ._worker import kill


class Closing(Engine[ThreadWorker, Call]):
    """The closing of a :class:`~anyfork._pool._threads.ThreadsEngine` (its state is the
    engine's)."""

    _lock: threading.Lock  # (not Engine's nullcontext)
    _outstanding: set[Call]
    _threads: set[threading.Thread]
    _changes: Changes
    _watcher: Watcher
    _closed: bool

    def cancel_pending(self) -> list[MapJob[Call]]:
        """Cancel every call no worker has started (``shutdown(cancel_futures=True)``), a map's
        items not sent yet too; returns the maps' jobs."""
        with self._lock:
            pending = list(self._outstanding)
            jobs = [job for job in self._core.queue if isinstance(job, MapJob)]
            for job in jobs:
                self._core.withdraw(job)
        for job in jobs:
            job.fail(cf.CancelledError())
        for call in pending:
            call.fut.cancel()  # queued ones withdraw themselves; inbox ones are skipped
        return jobs

    def interrupt(self) -> None:
        """A caller was interrupted (``KeyboardInterrupt``) while it waited for the pool: every
        call no worker has started is cancelled (a map's items not sent yet too), and the busy
        workers are killed, so their running calls fail (``WorkerDiedError``) and nothing
        outlives the program.  The pool stays open: a later call starts a new worker."""
        self.cancel_pending()
        with self._lock:
            busy = [w for w in self._core.workers.values() if w.ready and w.load]
        for worker in busy:
            kill(worker.pid, worker.client)

    def close(
        self, *, wait: bool = True, cancel: bool = False, timeout: float | None = None
    ) -> None:
        """No new calls; the queue is still served (``cancel``: the fast way, see
        :meth:`_cancel`).  ``wait``: return once every worker thread has finished (their
        processes have exited) and the template is closed; otherwise a thread finishes that
        in the background.  ``timeout``: after that many seconds the rest is done the fast way
        and ``TimeoutError`` raised.  Interrupted (``KeyboardInterrupt``, wherever it lands):
        the rest is done the fast way, and the interrupt raised."""
        try:
            self._close(wait, cancel, timeout)
        except Exception:
            raise
        except BaseException:
            self.interrupt()
            self._cancel()
            self._finish()
            raise

    def _close(self, wait: bool, cancel: bool, timeout: float | None) -> None:
        if cancel:
            self._cancel()
        with self._lock:
            if not self._core.closing:
                self._core.close()
                self._schedule()
        if not wait:
            _daemon.start(self._finish, "anyfork-pool-close")
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._join(deadline):
            self._cancel()
            self._finish()
            raise TimeoutError(f"the pool did not close within {timeout} s (its workers killed)")
        self._finish()

    def _cancel(self) -> None:
        """Queued calls fail with ``ClosedError`` (and those given to a worker that has not
        started them), workers are killed (their running calls fail with
        ``WorkerDiedError``), starting ones abandoned."""
        with self._lock:
            calls, workers = self._core.cancel()
            for worker in workers:
                for call in drain(worker.inbox):
                    if not call.claimed:
                        call.claimed = True
                        calls.append(call)
                worker.inbox.put(None)
            self._changes.bump()
        fail(calls, ClosedError("the pool was cancelled"))
        for worker in workers:
            kill(worker.pid, worker.client)

    def _join(self, deadline: float | None) -> bool:
        """Join every worker thread, including any a closing pool starts to serve its queue;
        ``False`` at the deadline."""
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                return True
            for thread in threads:
                while thread.is_alive():
                    left = remaining(deadline)
                    if left == 0:
                        return False
                    thread.join(_daemon.nap(left))
            with self._lock:
                self._threads.difference_update(threads)

    def _finish(self) -> None:
        self._join(None)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._watcher.close()
        self._starter.close()
        _watch.closed(self)
        if self._on_close is not None:
            self._on_close()
