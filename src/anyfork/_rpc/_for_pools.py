"""What the pools (``anyfork._pool``) use of an RPC client beyond its public face; they reach a
client through this module only (``tests/test_layers.py`` checks).  The names are the clients'
own functions and C attribute getters, not wrappers: a pool call pays no Python call for them.
"""

from __future__ import annotations

import operator

from ._blocking import BlockingClient
from ._client import Client

submit = Client._submit
submit_batch = Client._submit_batch
call = BlockingClient._call
call_batch = BlockingClient._call_batch
#: The lock a blocking client's every call holds (a look at its state and a call: one step).
lock = operator.attrgetter("_lock")
#: The client's socket (watched for the worker's hang-up), ``None`` once it has finished.
sock = operator.attrgetter("_sock")
