"""What the pools (``anyfork._pool``, the layer above) use of an RPC client beyond its public
face, in one place: a call with its own event handler, or a batch, sent without the public
methods' argument handling; a blocking client's lock (so that a look at its state and a call are
one step); the socket (watched for the worker's hang-up).  The pools reach a client through this
module only (``tests/test_layers.py`` checks).

The names are the clients' own functions and C attribute getters, not wrappers: a pool call
pays no Python call for them.
"""

from __future__ import annotations

import operator

from ._blocking import BlockingClient
from ._client import Client

#: ``submit(client, args, kwargs, on_event=None, columns=None)``: send a call (given
#: ``columns``, a batch) on an asyncio client; its future.
submit = Client._submit
#: ``submit_batch(client, columns, on_event=None)``: a batch; its future's result is its
#: ``BatchResult``.
submit_batch = Client._submit_batch
#: ``call(client, args, kwargs, timeout, on_event=None)``: a call on a blocking client; its
#: outcome.
call = BlockingClient._call
#: ``call_batch(client, columns, timeout, on_event=None)``: a batch's ``BatchResult``.
call_batch = BlockingClient._call_batch
#: ``lock(client)``: the lock a blocking client's every call holds from request to reply.
lock = operator.attrgetter("_lock")
#: ``sock(client)``: the client's socket, ``None`` once it has finished with its worker.
sock = operator.attrgetter("_sock")
