"""How the threads engine closes (graceful, fast, at a deadline) and is interrupted: a part of
``_threads.ThreadsEngine``, kept apart to keep each module readable."""

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
    _lock: threading.Lock  # (not Engine's nullcontext)
    _outstanding: set[Call]
    _threads: set[threading.Thread]
    _changes: Changes
    _watcher: Watcher
    _closed: bool

    def cancel_pending(self) -> list[MapJob[Call]]:
        """``shutdown(cancel_futures=True)``; returns the maps' jobs."""
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
        """A caller was interrupted while it waited for the pool (see ``BlockingPool``): calls
        not started are cancelled, busy workers killed; the pool stays open."""
        self.cancel_pending()
        with self._lock:
            busy = [w for w in self._core.workers.values() if w.ready and w.load]
        for worker in busy:
            kill(worker.pid, worker.client)

    def close(
        self, *, wait: bool = True, cancel: bool = False, timeout: float | None = None
    ) -> None:
        """``BlockingPool.close``; ``wait=False``: a thread finishes it in the background.
        Interrupted (wherever it lands): the rest is done the fast way."""
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
        """``BlockingPool.cancel`` (calls in a worker's inbox fail as queued ones do)."""
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
        """Join every worker thread (a closing pool may start more); ``False`` at the
        deadline."""
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
