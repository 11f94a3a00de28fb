"""anyfork: process creation done right.

New processes are forked from small, pre-initialised template processes, or exec'd fresh without
forking the caller.  Each has a socket to its creator; you can import modules in it, run code,
pass it file descriptors and strings, fork it further, and finally run a function that gets the
socket and the arguments.

General layout, lowest layer first; a module imports only from its own layer or lower ones
(``tests/test_layers.py`` checks each rule):

* ``_child/`` is the child side: the code every template and worker runs (the command server,
  the wire codecs, the RPC server and its serialisers).  It imports only cheap stdlib modules,
  itself, this lazy root and ``anyfork.worker`` (the child's public API), and never asyncio,
  typing, dataclasses, logging or inspect at import time (the async RPC backend, loaded only by
  workers that ask for it, apart): an exec'd child pays for every import at each start.
* ``_util.py`` and ``_errors.py`` are the base of the parent side: small helpers, the error tree
  and the one ``rebuild()`` of a child's error records.
* ``_core/`` is the process core (``Process``, templates, spawning, the reaper): one protocol,
  run by an asyncio and a blocking driver; it imports no asyncio at import time.
* ``_rpc/`` is RPC on top of processes, and ``_pool/`` pools of RPC workers on top of that.
  ``Process.rpc()`` is the one documented lazy forwarder up the layers.
* ``remote/`` (``anyfork.remote``) is processes on other hosts over OpenSSH, on top of the
  process core: its ``_boot`` and ``_agent`` run on the remote host, under the child side's
  rules (stdlib only, Python 3.8).
* The sans-IO modules (``_child._wire``, ``_child._rpc_wire``, ``_child._records``,
  ``_pool._core``, ``_pool._policy``, ``_rpc._batching``: ``SANS_IO`` in the test) import no
  sockets, clocks, event loop, threads or signals.

There is no import cycle, and no module touches the privates of another subpackage's objects
(the few that remain are listed, each with its reason, in ``test_layers.REACH_INS``).

The root is lazy (PEP 562): ``import anyfork.worker`` and the command server that runs in every
child import nothing of the parent side (asyncio, typing...).  The public names load on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - static view of the lazy names below
    from ._core._process import Process as Process
    from ._core._templates import main_template as main_template
    from ._core._templates import new as new
    from ._core._templates import new_exec as new_exec
    from ._core._templates import new_from_fh as new_from_fh
    from ._core._templates import start_early as start_early
    from ._errors import AnyforkError as AnyforkError
    from ._errors import ClosedError as ClosedError
    from ._errors import DecodeError as DecodeError
    from ._errors import EncodeError as EncodeError
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RemoteError as RemoteError
    from ._errors import RemoteHostError as RemoteHostError
    from ._errors import RemoteTraceback as RemoteTraceback
    from ._errors import SerializationError as SerializationError
    from ._errors import SpawnError as SpawnError
    from ._errors import WorkerDiedError as WorkerDiedError
    from ._pool._aio import Pool as Pool
    from ._pool._blocking import BlockingPool as BlockingPool
    from ._pool._blocking import PoolExecutor as PoolExecutor
    from ._pool._records import PoolStatistics as PoolStatistics
    from ._rpc._start import BlockingClient as BlockingClient
    from ._rpc._start import Client as Client
    from ._rpc._start import Serializer as Serializer
    from ._rpc._start import rpc as rpc
    from ._rpc._start import rpc_blocking as rpc_blocking

__version__ = "0.1.0"

#: Each public name by the module that defines it (loaded on first use: ``__getattr__``).
_MODULES = {
    "_errors": "AnyforkError ClosedError DecodeError EncodeError ProtocolError RemoteError "
    "RemoteHostError RemoteTraceback SerializationError SpawnError WorkerDiedError",
    "_core._process": "Process",
    "_core._templates": "main_template new new_exec new_from_fh start_early",
    "_rpc._start": "BlockingClient Client Serializer rpc rpc_blocking",
    "_pool._aio": "Pool",
    "_pool._records": "PoolStatistics",
    "_pool._blocking": "BlockingPool PoolExecutor",
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names.split()}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'anyfork' has no attribute {name!r}")
    import importlib

    # (``__module__`` is already "anyfork": each defining module calls ``_util.publish``.)
    value = getattr(importlib.import_module(f"anyfork.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
