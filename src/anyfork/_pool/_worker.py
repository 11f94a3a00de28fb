"""How a pool starts its workers, for both engines (:class:`Starter`), its settings from its
arguments, and what it reads from the operating system (usable CPUs, a worker's memory)."""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import pickle
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from .._core._process import Func, Process, func_ref
from .._errors import AnyforkError, SpawnError
from ._policy import Settings, positive

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._rpc._connection import Backend as Backend  # (the pool faces take it from here)
    from .._rpc._drivers import Facts
    from .._rpc._start import BlockingClient, Client
    from .._rpc._start import Serializer as Serializer

F = TypeVar("F", bound=Callable[..., None])

#: Worker start-up deadline (fork + init + ready), unless the rpc option ``timeout`` says else.
START_TIMEOUT = 60.0
#: How long stopping one worker may take before it is killed.
STOP_TIMEOUT = 30.0

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
#: Each started worker's process, by its client (``kill``).
_workers: weakref.WeakKeyDictionary[Facts, Process] = weakref.WeakKeyDictionary()


#: What a pool is given to fork its workers from: one template (``None``: the pool's own), or
#: several, each with its cap, ``[(template, cap), ...]`` (local and remote ones: a pool
#: spanning hosts; see ``Groups``).
Templates = Process | Sequence[tuple[Process, int]] | None


class Group:
    """One of several templates, with its cap and its workers' clients (weakly: a closed or
    dead worker's client is not usable, and no longer counts)."""

    __slots__ = ("cap", "clients", "failure", "starting", "template")

    def __init__(self, template: Process, cap: int) -> None:
        self.template = template
        self.cap = cap
        self.clients: list[weakref.ref[Client | BlockingClient]] = []
        self.starting = 0  # workers being started from it
        #: Why a start from it failed: it gets no more workers (only its own workers' calls fail).
        self.failure: BaseException | None = None

    def live(self) -> int:
        """Its workers: started and usable, or starting."""
        self.clients = [ref for ref in self.clients if (c := ref()) is not None and c.usable]
        return len(self.clients) + self.starting


def groups_of(template: Templates) -> list[Group] | None:
    """The groups of several templates (``None``: one template), checked."""
    if not isinstance(template, (list, tuple)):
        return None  # one template (or not a template: ``Starter`` says so)
    groups: list[Group] = []
    for entry in template:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Process)):
            raise TypeError(
                f"a pool's templates are [(template, cap), ...] with anyfork.Process templates, "
                f"not {entry!r} in {template!r}"
            )
        cap = entry[1]
        if not positive(cap):
            raise ValueError(f"a template's cap is an int >= 1, not {cap!r}")
        groups.append(Group(entry[0], cap))
    if not groups:
        raise ValueError("a pool's list of templates is empty")
    return groups


def _drop(*args: object) -> None:
    """The workers' ``on_event`` when the user gave none."""


def unexpected(face: str, names: set[str]) -> TypeError:
    """The error for unknown keyword arguments, naming anyfork's names for another pool's."""
    hints = [f"{n}= is {_THEIRS[face][n]}=" for n in sorted(names) if n in _THEIRS.get(face, {})]
    note = f" ({'; '.join(hints)})" if hints else ""
    return TypeError(f"{face}() got unexpected keyword arguments {sorted(names)}{note}")


def other_pools_names(face: str) -> Callable[[F], F]:
    """Decorates ``face``'s constructor: an unknown keyword raises :func:`unexpected`'s
    ``TypeError`` (``processes= is max=``) instead of Python's; the signature stays its own."""

    def decorate(init: F) -> F:
        code = init.__code__
        names = frozenset(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])

        @functools.wraps(init)
        def checked(*args: Any, **kwargs: Any) -> None:
            unknown = kwargs.keys() - names
            if unknown:
                raise unexpected(face, set(unknown))
            init(*args, **kwargs)

        return cast("F", checked)

    return decorate


def rpc_options(
    backend: Backend,
    serializer: str | Serializer,
    init: Func | None,
    done: Func | None,
    on_event: Callable[..., object] | None,
    concurrency: int,
    timeout: float | None,
) -> dict[str, Any]:
    return {
        "backend": backend,
        "serializer": serializer,
        "init": init,
        "done": done,
        "on_event": on_event,
        "concurrency": concurrency,
        "timeout": timeout,
    }


class Starter:
    """A pool's template(s), function and ``rpc()`` options (checked at construction: a pool
    raises for bad arguments at once), and the start of a worker, for either engine.  A pool's
    own template is primed with the RPC server, and made again if it dies; its own start-up step
    (``_in_worker.setup``) runs only when it has something to do."""

    def __init__(
        self,
        template: Templates,
        func: Func,
        rpc_options: dict[str, Any],
        face: str = "Pool",
        setup: tuple[Callable[..., object], tuple[Any, ...]] | None = None,
    ) -> None:
        self._groups = groups_of(template)
        if self._groups is not None:
            template = None
        elif template is not None and not isinstance(template, Process):
            raise TypeError(
                f"a pool's template is an anyfork.Process or None, not {template!r} (the function "
                f"comes second: Pool(None, 'module:function'))"
            )
        self.func = func_ref(func)
        self.face = face  # (an executor's start-up error is also a ``BrokenProcessPool``)
        options = dict(rpc_options)
        self._on_event: Callable[..., object] | None = options.pop("on_event")
        init = options.pop("init")
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
        self._owned = template is None and self._groups is None
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
        without the authkey its proxies need."""
        if self._keyless and _MANAGERS in sys.modules:
            self._keyless = False
            return True
        return False

    def _prepare(self, proc: Process) -> tuple[dict[str, Any], bool]:
        """The ``init`` (and its argument) of a worker about to start; whether it gets the
        parent's authkey.  Without a Manager around nor an initializer, a worker imports
        nothing more."""
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
        """One worker's ``rpc()`` options: the pool's, ``callbacks`` (``on_error``,
        ``on_close``), ``on_retire()`` for ``anyfork.worker.retire()``."""
        on_event = self._on_event or _drop
        return dict(self._rpc_options, on_event=on_event, _on_retire=on_retire, **callbacks)

    async def start(
        self, on_retire: Callable[[], object], **callbacks: Callable[..., object]
    ) -> tuple[Client, bool]:
        """Fork a worker and start its RPC server; its client, and whether it has the parent's
        authkey.  Raises its start-up error (:meth:`_failed`)."""
        for retry in (True, False):
            tmpl = self._get()
            try:
                proc = tmpl.fork()
                init, keyed = self._prepare(proc)
                options = self._options(on_retire, **callbacks, **init)
                client = await proc.rpc(self.func, **options)
                self._started(tmpl, proc, client)
                return client, keyed
            except SpawnError as exc:
                error = self._failed(tmpl, exc, retry)
            finally:
                self._release(tmpl)
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
                client = proc.rpc_blocking(self.func, **self._options(on_retire, **init))
                self._started(tmpl, proc, client)
                return client, keyed
            except SpawnError as exc:
                error = self._failed(tmpl, exc, retry)
            finally:
                self._release(tmpl)
            if error is not None:
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self) -> Process:
        """The template to fork the next worker from (made and primed on first use)."""
        from .._rpc._start import prime

        with self._lock:
            if self._groups is not None:
                tmpl = self._choose(self._groups)
            else:
                tmpl = self._template or _own_template(self.func)
                self._template = tmpl
        prime(tmpl)
        return tmpl

    @staticmethod
    def _choose(groups: list[Group]) -> Process:
        """The one with the fewest workers for its cap, among those that have not failed; the
        worker counts at once, as starting, so that starts in several threads spread."""
        roomy = [g for g in groups if g.failure is None and g.live() < g.cap]
        if not roomy:
            failed = [g.failure for g in groups if g.failure is not None]
            why = f" (a template failed: {failed[-1]})" if failed else ""
            raise SpawnError(f"every template of the pool is at its cap or has failed{why}")
        group = min(roomy, key=lambda g: g.live() / g.cap)
        group.starting += 1
        return group.template

    def _group(self, tmpl: Process) -> Group | None:
        for group in self._groups or ():
            if group.template is tmpl:
                return group
        return None

    def _started(self, tmpl: Process, proc: Process, client: Client | BlockingClient) -> None:
        _workers[client] = proc
        with self._lock:
            group = self._group(tmpl)
            if group is not None:
                group.clients.append(weakref.ref(client))

    def _release(self, tmpl: Process) -> None:
        """A start from ``tmpl`` is over (its worker, if any, counts by its client)."""
        with self._lock:
            group = self._group(tmpl)
            if group is not None:
                group.starting -= 1

    def _failed(self, tmpl: Process, exc: SpawnError, retry: bool) -> BaseException | None:
        """The error to raise, or ``None`` to try once more (only if ``retry``).

        The caller's template is the caller's: its death fails the start.  The pool's own is
        dropped (the next :meth:`_get` makes a new one): when it merely died, that is worth one
        more try; when it failed to import the function's module, the error is that failure,
        of the type ``rpc()`` raises for the same mistake, and a retry would repeat it."""
        if self._groups is not None:
            # That template stops receiving workers; another one is tried (once).
            with self._lock:
                group = self._group(tmpl)
                if group is not None:
                    group.failure = exc
                others = any(g.failure is None for g in self._groups)
            return None if retry and others else exc
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
        """Close the pool's own template."""
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
    """A pool's own template: the function's module imported once, shared by every worker."""
    from .._core._templates import new

    tmpl = new()
    module = func.partition(":")[0]
    if ":" in func and module != "__main__":
        tmpl.require(module)
    return tmpl


def kill(pid: int | None, client: Facts | None) -> None:
    """Kill a worker if it runs (its client is usable: the pid is not reused yet)."""
    if pid is not None and client is not None and client.usable:
        with contextlib.suppress(ProcessLookupError):
            # Through the process (a remote worker's pid is not one of this host's; its host
            # kills it), as the client itself kills a condemned worker.
            _workers[client].kill(signal.SIGKILL)


def settings(
    template: Templates, max: int | None, idle: int, load: int, start: float, stop: float
) -> Settings:
    """The policy's settings from a pool's arguments (``max`` defaults to the caps' sum of
    several templates, else to the usable CPUs, or ``idle`` if larger), checked."""
    groups = groups_of(template)
    if max is None and groups is not None:
        max = sum(group.cap for group in groups)
    elif max is None:
        max = builtins.max(cpu_count(), idle) if isinstance(idle, int) else cpu_count()
    return Settings(max, idle, load, start, stop)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (``VmRSS``), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
