"""How a pool starts its workers, for both engines: the template (the caller's, or the pool's
own, primed with the RPC server, made again if it dies), the function, and the options passed
to each worker's ``rpc()`` (the pool's ``on_event`` filter in front of the user's), with the
pool's own start-up step when it has one (``_in_worker.setup``: the parent's multiprocessing
authkey once a ``multiprocessing.Manager`` may exist, an executor's ``initializer``)."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
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
_RPC_OPTIONS = frozenset(
    {"backend", "serializer", "init", "on_event", "concurrency", "timeout", "done"}
)
#: The names other pools give what anyfork's call otherwise, for the error that names ours.
_THEIRS = {
    "Pool": {
        "processes": "max",
        "max_workers": "max",
        "initializer": "init",
        "initargs": "init (with the template's send_arg)",
        "maxtasksperchild": "max_calls",
        "max_tasks_per_child": "max_calls",
    },
    "PoolExecutor": {
        "processes": "max_workers",
        "maxtasksperchild": "max_tasks_per_child",
        "max_calls": "max_tasks_per_child",
        "max": "max_workers",
    },
}
_THEIRS["BlockingPool"] = _THEIRS["Pool"]
_SETUP = "anyfork._pool._in_worker:setup"
#: Loaded in the parent once a multiprocessing.Manager (whose proxies need the authkey) can be.
_MANAGERS = "multiprocessing.managers"


def unexpected(face: str, names: set[str]) -> TypeError:
    """The error for unknown keyword arguments, naming anyfork's equivalent of the known ones."""
    hints = [f"{n}= is {_THEIRS[face][n]}=" for n in sorted(names) if n in _THEIRS.get(face, {})]
    note = f" ({'; '.join(hints)})" if hints else ""
    return TypeError(f"{face}() got unexpected keyword arguments {sorted(names)}{note}")


class Starter:
    """What a pool needs to start a worker: its template, its function and the ``rpc()``
    options (checked at construction, so that a pool raises for bad arguments at once), and
    the start itself, for either engine: :meth:`start` (asyncio) and :meth:`start_blocking`."""

    def __init__(
        self,
        template: Process | None,
        func: Func,
        rpc_options: dict[str, Any],
        face: str = "Pool",
        setup: tuple[Callable[..., object], tuple[Any, ...]] | None = None,
    ) -> None:
        if template is not None and not isinstance(template, Process):
            raise TypeError(
                f"a pool's template is an anyfork.Process or None, not {template!r} (the function "
                f"comes second: Pool(None, 'module:function'))"
            )
        unknown = set(rpc_options) - _RPC_OPTIONS
        if unknown:
            raise unexpected(face, unknown)
        self.func = func_ref(func)
        options = dict(rpc_options)
        self._on_event: Callable[..., object] | None = options.pop("on_event", None)
        options.setdefault("timeout", START_TIMEOUT)
        init = options.pop("init", None)
        self._init = func_ref(init) if init is not None else None
        # An initializer travels pickled (by the serialiser's pickle, so cloudpickle takes
        # lambdas), checked now: a bad one raises here rather than at every worker's start.
        self._setup: bytes | None = None
        if setup is not None:
            dumps = pickle.dumps
            if options.get("serializer") == "cloudpickle":
                import cloudpickle

                dumps = cloudpickle.dumps
            try:
                self._setup = dumps((self._init, *setup))
            except Exception as exc:
                raise TypeError(
                    f"the pool's initializer or initargs cannot be pickled: {exc}"
                ) from exc
        self._rpc_options = options
        self._template = template
        self._owned = template is None
        self._lock = threading.Lock()  # the threads engine starts workers from several threads
        self._keyless = False  # a worker was started without the parent's authkey
        from .._child._serializers import get

        try:
            #: The serialiser carries batches of calls (``map`` sends them).
            self.batchable: bool = get(options.get("serializer", "pickle")).batches
        except Exception:
            self.batchable = False  # a serialiser that cannot be built: the start will say so

    def rekey(self) -> bool:
        """``True`` once, when a ``multiprocessing.Manager`` may exist and workers were started
        without the authkey its proxies need (the pool replaces them)."""
        if self._keyless and _MANAGERS in sys.modules:
            self._keyless = False
            return True
        return False

    def _prepare(self, proc: Process) -> tuple[dict[str, Any], bool]:
        """The ``init`` (and its argument) of a worker about to start; whether it gets the
        parent's authkey.  The pool's own step only when it has something to do: a worker
        of a pool without a Manager around nor an initializer imports nothing more."""
        key = None
        if _MANAGERS in sys.modules:
            from multiprocessing import process

            key = bytes(process.current_process().authkey)
        if key is None and self._setup is None:
            self._keyless = True
            return ({} if self._init is None else {"init": self._init}), False
        setup = self._setup or pickle.dumps((self._init, None, ()))
        proc.send_arg(pickle.dumps((key, setup)))
        return {"init": _SETUP}, key is not None

    def _options(
        self, on_retire: Callable[[], object], **callbacks: Callable[..., object] | str
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
    ) -> tuple[Client, bool]:
        """Fork a worker and start its RPC server (see :meth:`_options` for the arguments);
        its client, and whether it has the parent's authkey.  Raises its start-up error (see
        :meth:`_failed`)."""
        for retry in (True, False):
            tmpl = self._get()
            try:
                proc = tmpl.fork()
                init, keyed = self._prepare(proc)
                options = self._options(on_retire, **callbacks, **init)
                return await proc.rpc(self.func, **options), keyed
            except SpawnError as exc:
                error = self._failed(tmpl, exc, retry)
            if error is not None:
                raise error  # outside the except clause: the chain stays the error's own
        raise AssertionError("unreachable")  # pragma: no cover

    def start_blocking(self, on_retire: Callable[[], object]) -> tuple[BlockingClient, bool]:
        """The blocking twin of :meth:`start`."""
        for retry in (True, False):
            tmpl = self._get()
            try:
                proc = tmpl.fork()
                init, keyed = self._prepare(proc)
                return proc.rpc_blocking(self.func, **self._options(on_retire, **init)), keyed
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
