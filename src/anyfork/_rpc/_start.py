"""RPC, parent side: ``rpc(proc, func)`` makes a prepared process an RPC server; returns a client.

The protocol: ``_child._rpc_wire``; the child: ``_child._rpc_server``; the connection:
``_connection``, driven by ``_client`` and ``_blocking``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from .._child import _rpc_wire as W
from .._child._serializers import Codec
from .._child._serializers import get as get_codec
from .._child._serializers import of as codec_of
from .._core._lineage import prepare_rpc, template_of, where_of
from .._core._process import Func, Process, func_ref
from .._errors import AnyforkError, also_anyfork
from .._util import publish
from . import _blocking, _client
from ._blocking import BlockingClient
from ._client import Client
from ._connection import Backend, RpcConnection

__all__ = ["BlockingClient", "Client", "Serializer", "rpc", "rpc_blocking"]

_SERVE = "anyfork._child._rpc_server:serve"
_SERVER_MODULE = "anyfork._child._rpc_server"

#: Templates that have imported the RPC server (see ``prime``).
_primed: weakref.WeakSet[Process] = weakref.WeakSet()


def prime(tmpl: Process | None) -> None:
    """Have the template ``tmpl`` import the RPC server, once: imported after the fork, it cost
    ~10 ms of a worker's ~12 ms start; preloaded, it would make every template bigger."""
    if tmpl is None or tmpl in _primed:
        return
    _primed.add(tmpl)
    with contextlib.suppress(AnyforkError):  # a dead template: this worker's start will say so
        tmpl.require(_SERVER_MODULE)


class Serializer(Protocol):
    """A user serialiser for ``rpc(serializer=...)``: the object itself, or its ``"module:attr"``
    name (the worker imports it by that name; see ``anyfork._child._serializers``)."""

    def dumps(self, obj: Any, /) -> bytes:  # Any: user values cross the serialiser boundary
        """Encode ``obj`` (lists, str-keyed dicts and the values they hold); raise on failure."""
        ...

    def loads(self, data: bytes, /) -> Any:
        """Decode what ``dumps`` made; raise on failure."""
        ...


def serializer_ref(obj: object) -> str:
    """The ``"module:attr"`` by which a worker imports ``obj``: its ``__qualname__``, else the
    global of its class's module bound to it; ``ValueError`` if neither works."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)):
        module = type(obj).__module__
        space = vars(sys.modules[module]) if module in sys.modules else {}
        qualname = next((name for name, value in space.items() if value is obj), None)
    if module not in (None, "__main__", "__mp_main__") and qualname and "<" not in qualname:
        found: object = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is obj:
            return f"{module}:{qualname}"
    raise ValueError(
        f"the serializer {obj!r} cannot be found by the worker: bind it to a global of a module "
        f"the worker can import (not the main script), or pass its 'module:attr' name"
    )


def _prepare(
    proc: Process,
    func: Func,
    backend: str,
    serializer: str | Serializer,
    init: Func | None,
    concurrency: int,
    done: Func | None,
) -> Codec:
    """Check the arguments, build the serialiser, send the configuration, ``prime``; failures
    are both their own type and an ``AnyforkError``, as the worker's start-up failures."""
    try:
        prepare_rpc(proc, func)  # (a function of the main script: the worker learns where it is)
        if backend not in ("sync", "async"):
            raise ValueError(f"backend is 'sync' or 'async', not {backend!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency is a positive int, not {concurrency!r}")
        if isinstance(serializer, str):
            name, codec = serializer, get_codec(serializer)
        elif not callable(getattr(serializer, "dumps", None)) or not callable(
            getattr(serializer, "loads", None)
        ):
            raise TypeError(
                f"serializer is a name or an object with dumps() and loads(), not {serializer!r}"
            )
        else:
            name = serializer_ref(serializer)
            codec = codec_of(name, serializer)
        init_ref = func_ref(init) if init is not None else ""
        done_ref = func_ref(done) if done is not None else ""
        config = W.pack_config(func_ref(func), backend, name, init_ref, concurrency, done=done_ref)
        proc.send_arg(config)
    except Exception as exc:
        raise also_anyfork(exc) from exc.__cause__
    prime(template_of(proc))
    return codec


async def rpc(
    proc: Process,
    func: Func,
    *,
    backend: Backend = "sync",
    serializer: str | Serializer = "pickle",
    init: Func | None = None,
    on_event: Callable[..., object] | None = None,
    on_error: Callable[[BaseException], object] | None = None,
    on_close: Callable[[], object] | None = None,
    concurrency: int = 64,
    timeout: float | None = None,
    done: Func | None = None,
    _on_retire: Callable[[], object] | None = None,
) -> Client:
    """Turn ``proc`` (prepared, not yet run) into an RPC server for ``func``; return its client.

    Args:
        proc: the process; everything sent to it so far is done first, and the args and fds
            sent with ``send_arg``/``send_fh`` go to ``init`` (the only way the function can
            see them).
        func: the function to serve, as an object or ``"module:qualname"`` (importable in the
            child, or defined there with ``eval``).  With ``backend="async"`` it may be a
            coroutine function.
        backend: ``"sync"`` (a blocking loop, one call at a time, no event loop in the child)
            or ``"async"`` (calls run concurrently on an asyncio loop in the child).
        serializer: ``"pickle"`` (default, protocol 5), ``"cloudpickle"``, ``"json"``,
            ``"msgpack"``, ``"bytes"``, ``"str"``, or a user serialiser: an object with
            ``dumps``/``loads`` (a :class:`Serializer`) or its ``"module:attr"`` name.  The
            worker imports it by that name (an object passed must be a global of a module it
            can import, or a class; else ``ValueError``).
        init: called in the child first, with the args and fds sent before.
        on_event: called as ``on_event(*args)`` for each ``anyfork.worker.event(*args)`` (but
            those of a call given a handler of its own, ``client.call(..., on_event=...)``),
            in the order the child produced events and results.
        on_error: called with the exception when the connection fails (the worker died with
            calls outstanding, a broken stream, an event nobody handles).
        on_close: called once when the worker has closed the connection with nothing
            outstanding (normally after ``aclose``).
        concurrency: the async backend's limit on calls running at once.
        timeout: seconds for the start-up (``TimeoutError``).
        done: called in the child, without arguments, as its last act: once the parent has
            closed the connection (``aclose()``, or the client dropped or its process gone)
            and every call has been answered; the counterpart of ``init``.  With
            ``backend="async"`` it may be a coroutine function (awaited).  Resolved at
            start-up, like ``func`` and ``init``.  An exception in it is printed to the
            worker's stderr and the worker exits with status 1: ``aclose()`` still returns
            (``client.returncode`` is 1).  Not called after a broken stream, nor when the
            parent has gone while the worker was writing to it.
        _on_retire: internal (the pools'): called, as an event would be, when the worker
            calls ``anyfork.worker.retire()``; without it the request is ignored.

    Raises:
        The start-up error, as its own type and an ``AnyforkError`` both (``except
        ModuleNotFoundError`` and ``except anyfork.AnyforkError`` both catch it): a wrong
        function name, ``init`` or ``done`` (``AttributeError``, ``ModuleNotFoundError``), an
        exception in ``init`` (its own type), a serialiser that cannot be built here or in the
        worker (``ImportError``, ``ValueError``...), a bad argument (``ValueError``); a worker
        that died first (``SpawnError``); a protocol-version mismatch or a broken stream
        (``ProtocolError``, naming the worker's pid); ``TimeoutError`` after ``timeout``.

    Cancellation: the connection is closed; the worker sees EOF and exits.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    codec = _prepare(proc, func, backend, serializer, init, concurrency, done)
    sock = await proc.run(_SERVE, timeout=timeout)
    try:
        conn = RpcConnection(
            codec, backend, proc.pid, functools.partial(_client.emit, loop),
            concurrency=concurrency, on_event=on_event, on_error=on_error, on_close=on_close,
            on_retire=_on_retire, where=where_of(proc),
        )  # fmt: skip
        client = Client._create(proc, sock, conn, loop=loop)
    except BaseException:
        sock.close()
        raise
    remaining = None if timeout is None else max(0.0, timeout - (loop.time() - started))
    await client._wait_ready(remaining)
    return client


def rpc_blocking(
    proc: Process,
    func: Func,
    *,
    backend: Backend = "sync",
    serializer: str | Serializer = "pickle",
    init: Func | None = None,
    on_event: Callable[..., object] | None = None,
    on_error: Callable[[BaseException], object] | None = None,
    on_close: Callable[[], object] | None = None,
    concurrency: int = 64,
    timeout: float | None = None,
    done: Func | None = None,
    _on_retire: Callable[[], object] | None = None,
) -> BlockingClient:
    """The blocking twin of :func:`rpc` (same arguments); returns a :class:`BlockingClient`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    codec = _prepare(proc, func, backend, serializer, init, concurrency, done)
    sock = proc.run_blocking(_SERVE, timeout=timeout)
    try:
        conn = RpcConnection(
            codec, backend, proc.pid, _blocking.emit,
            concurrency=concurrency, on_event=on_event, on_error=on_error, on_close=on_close,
            on_retire=_on_retire, where=where_of(proc),
        )  # fmt: skip
        client = BlockingClient._create(proc, sock, conn)
    except BaseException:
        sock.close()
        raise
    client._wait_ready(deadline)
    return client


publish(globals())
