"""Processes on other hosts, over OpenSSH: ``anyfork.remote.Host``.

::

    from anyfork.remote import Host

    with Host("user@example.org") as host:          # one ssh connection, multiplexed
        client = host.new().rpc_blocking("math:factorial")
        print(client(20))
        client.close()

    async with Host("example.org") as host:
        sock = await host.new_exec().eval(CODE).run("serve")   # a real local socket

A ``Host`` keeps one ssh connection (a ControlMaster) and one small agent process on the remote
host; each new remote process is a channel through that connection to the agent, which execs
(``new_exec``) or forks (``new``) it.  The returned ``RemoteProcess`` is an
:class:`anyfork.Process`: ``require``, ``eval``, ``send_arg``, ``fork`` (on the host: remote
templates nest there), ``wait``, ``returncode``, ``run`` (a local
``socket.socket`` connected to the remote process), ``rpc`` and ``pid`` work as for a local one;
``send_fh`` and ``to_fh`` raise ``NotImplementedError`` at the call.

A pool spans hosts when given several templates with their caps::

    with Host("a") as a, Host("b") as b:
        here, there = anyfork.new().require("m"), [h.new().require("m") for h in (a, b)]
        templates = [(here, 2), (there[0], 4), (there[1], 4)]
        with anyfork.BlockingPool(templates, "m:work") as pool:
            results = list(pool.map(items))

Only ``python3`` (3.8 or newer) is needed on the remote host: the child side of anyfork travels
over the connection as source at connect time, is checked against the protocol version, and
lives in a private directory (mode 0700) that is removed, with every process made there, when
the host is closed, when this program exits or is killed, or when the connection is lost.

Trust: RPC results, events and errors come back through the serialiser, and pickle (the
default) runs code while it loads: **a remote host whose pickles you load can run code in this
program**.  Use hosts you trust as much as this program, or a data-only serialiser (``"json"``,
``"msgpack"``).

Layout: ``_host`` (``Host``, connecting and closing), ``_connection`` (one ssh connection and
its agent), ``_transport`` (what differs for a ``Process`` on a host, and for the host's agent),
``_ssh`` (running ssh, reading its failures); and what runs on the remote host, under the child
side's rules (stdlib only, Python 3.8): ``_boot`` (the bootstrap and the loader) and ``_agent``.
"""

from __future__ import annotations

from .._errors import RemoteHostError
from ._host import Host
from ._transport import RemoteProcess

__all__ = ["Host", "RemoteHostError", "RemoteProcess"]

for _obj in (Host, RemoteProcess):
    _obj.__module__ = __name__
del _obj
