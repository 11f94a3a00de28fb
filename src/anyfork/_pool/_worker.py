"""How a pool starts its workers, for both engines: the template (the caller's, or the pool's
own, primed with the RPC server, made again if it dies), the function, and the options passed
to each worker's ``rpc()`` (the pool's ``on_event`` filter in front of the user's)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from .._core._process import Func, Process, func_ref
from .._errors import AnyforkError, SpawnError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._rpc._base import Base
    from .._rpc._start import BlockingClient, Client

#: Worker start-up deadline (fork + init + ready), unless the rpc option ``timeout`` says else.
START_TIMEOUT = 60.0
#: How long stopping one worker may take before it is killed.
STOP_TIMEOUT = 30.0

_RETIRE = "anyfork.pool:retire:9d2f6c1e8b7a4e35"  # anyfork.worker._RETIRE, without importing it
_RETIRE_MARKS = (_RETIRE, _RETIRE.encode())
_RPC_OPTIONS = frozenset({"backend", "serializer", "init", "on_event", "concurrency", "timeout"})


class Starter:
    """What a pool needs to start a worker: its template, its function and the ``rpc()``
    options (checked at construction, so that a pool raises for bad arguments at once), and
    the start itself, for either engine: :meth:`start` (asyncio) and :meth:`start_blocking`."""

    def __init__(self, template: Process | None, func: Func, rpc_options: dict[str, Any]) -> None:
        if template is not None and not isinstance(template, Process):
            raise TypeError(
                f"a pool's template is an anyfork.Process or None, not {template!r} (the function "
                f"comes second: Pool(None, 'module:function'))"
            )
        unknown = set(rpc_options) - _RPC_OPTIONS
        if unknown:
            raise TypeError(f"Pool() got unexpected keyword arguments {sorted(unknown)}")
        self.func = func_ref(func)
        options = dict(rpc_options)
        self._on_event: Callable[..., object] | None = options.pop("on_event", None)
        options.setdefault("timeout", START_TIMEOUT)
        self._rpc_options = options
        self._template = template
        self._owned = template is None
        self._lock = threading.Lock()  # the threads engine starts workers from several threads

    def _options(
        self, on_retire: Callable[[], object], **callbacks: Callable[..., object]
    ) -> dict[str, Any]:
        """The ``rpc()`` options for one worker: the pool's own plus ``callbacks``
        (``on_error``, ``on_close``), with an ``on_event`` that calls ``on_retire()`` for the
        worker's ``anyfork.worker.retire()`` and passes every other event to the user's
        handler (dropped without one)."""
        user = self._on_event

        def on_event(*args: Any) -> None:
            if len(args) == 1 and args[0] in _RETIRE_MARKS:
                on_retire()
            elif user is not None:
                user(*args)

        return dict(self._rpc_options, on_event=on_event, **callbacks)

    async def start(
        self, on_retire: Callable[[], object], **callbacks: Callable[..., object]
    ) -> Client:
        """Fork a worker and start its RPC server (see :meth:`_options` for the arguments);
        its client.  Raises its start-up error (see :meth:`_failed`)."""
        options = self._options(on_retire, **callbacks)
        for retry in (True, False):
            tmpl = self._get()
            try:
                return await tmpl.fork().rpc(self.func, **options)
            except SpawnError as exc:
                error = self._failed(tmpl, exc, retry)
            if error is not None:
                raise error  # outside the except clause: the chain stays the error's own
        raise AssertionError("unreachable")  # pragma: no cover

    def start_blocking(self, on_retire: Callable[[], object]) -> BlockingClient:
        """The blocking twin of :meth:`start`."""
        options = self._options(on_retire)
        for retry in (True, False):
            tmpl = self._get()
            try:
                return tmpl.fork().rpc_blocking(self.func, **options)
            except SpawnError as exc:
                error = self._failed(tmpl, exc, retry)
            if error is not None:
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self) -> Process:
        """The template to fork the next worker from (the pool's own is made, and every
        template primed with the RPC server, on first use)."""
        from .._rpc._start import prime

        with self._lock:
            tmpl = self._template
            if tmpl is None:
                tmpl = self._template = _own_template(self.func)
        prime(tmpl)
        return tmpl

    def _failed(self, tmpl: Process, exc: SpawnError, retry: bool) -> BaseException | None:
        """Starting a worker forked from ``tmpl`` raised ``exc``.  Returns the error to raise,
        or ``None`` to try once more (only if ``retry``).

        The caller's template is the caller's: its death fails the start (``SpawnError``).
        The pool's own is dropped (the next :meth:`_get` makes a new one, from a new default
        template if need be): when it merely died, that is worth one more try; when it failed
        to import the function's module (a typo), the error is that failure, of the type
        ``rpc()`` raises for the same mistake (``ModuleNotFoundError``, also an
        ``AnyforkError``), and trying again would only repeat it."""
        if not self._owned:
            return exc
        with self._lock:
            if self._template is tmpl:
                self._template = None
        tmpl.close()
        cause = exc.__cause__
        if isinstance(cause, AnyforkError) and not isinstance(cause, SpawnError):
            return cause
        return None if retry else exc

    def close(self) -> None:
        """Close the pool's own template; the caller's is theirs."""
        with self._lock:
            tmpl = self._template if self._owned else None
            if self._owned:
                self._template = None
        if tmpl is not None:
            tmpl.close()

    @property
    def current(self) -> Process | None:
        """The template workers fork from now (``None``: the pool's own, not made yet)."""
        return self._template


def _own_template(func: str) -> Process:
    """The template a pool makes when given none: forked from the default template, with the
    function's module imported once (every worker then forks with it loaded, and shared)."""
    from .._core._templates import new

    tmpl = new()
    module = func.partition(":")[0]
    if ":" in func and module != "__main__":
        tmpl.require(module)
    return tmpl


def kill(pid: int | None, client: Base | None) -> None:
    """Kill a worker the pool is closing the fast way, if it runs (a client not yet at its
    worker's end: the pid is not reused yet)."""
    if pid is not None and client is not None and client.usable:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
