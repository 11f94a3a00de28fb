"""anyfork.remote: one pool spanning "two hosts" (two OpenSSH servers on loopback).

Run it with ``make demo`` (``examples/demo.py`` calls it at its end) or
``.venv/bin/python examples/remote_demo.py``.  It needs OpenSSH's ``sshd`` on this machine
(skipped otherwise): it starts the test suite's two servers (``tests/sshd.py``: sshd on
127.0.0.1 and on 127.0.0.2, each with its own generated keys, as this user), then

1. connects a ``Host`` to each (one ssh connection each; anyfork's child side travels over it,
   nothing is installed there);
2. makes a template on each host (the function defined there once, shared by every worker
   forked from it, on that host) and one here;
3. runs a pool over the three, each with its cap, and shows where the calls ran;
4. kills the second server's sessions (the host "goes down"): the pool goes on with the
   others;
5. closes everything: no process is left on either "host".
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/sshd.py

import anyfork
from anyfork.remote import Host

#: Defined in each template: where the call ran (the sshd a remote process descends from, by
#: the address its ssh session arrived at), and a result.
WHERE = """
import os

def where(x):
    conn = os.environ.get("SSH_CONNECTION")
    return ("ssh " + conn.split()[2]) if conn else "here", x * x
"""


def step(text: str, seconds: float) -> None:
    print(f"  {seconds * 1000:7.1f} ms  {text}")


def main() -> None:
    import sshd

    print("\n== anyfork.remote: a pool spanning two hosts (sshd on 127.0.0.1 and 127.0.0.2)")
    if sshd.SSHD is None:
        print("  skipped: OpenSSH's sshd is not installed here (apt-get install openssh-server)")
        return
    servers = sshd.SshServers().start()
    try:
        run(servers)
    finally:
        servers.stop()


def run(servers: Any) -> None:
    start = time.perf_counter()
    hosts = [Host(name, ssh_options=servers.ssh_options) for name in ("host1", "host2")]
    try:
        for host in hosts:
            host.connect_blocking(timeout=60)
        step(
            f"connected to {', '.join(h.destination for h in hosts)} "
            f"(remote Python {hosts[0].python_version})",
            time.perf_counter() - start,
        )
        start = time.perf_counter()
        templates = [host.new().eval(WHERE) for host in hosts]
        local = anyfork.new().eval(WHERE)
        groups: Any = [(local, 2), (templates[0], 3), (templates[1], 3)]
        with anyfork.BlockingPool(groups, "where", idle=8) as pool:
            pool.wait_until(lambda s: s.workers == 8 and s.starting == 0, timeout=60)
            step("a pool of 8 workers: 2 here, 3 on each host", time.perf_counter() - start)
            start = time.perf_counter()
            results = list(pool.map(range(2000)))
            counts = collections.Counter(where for where, _ in results)
            assert [square for _, square in results] == [x * x for x in range(2000)]
            step(
                f"2000 calls through map(), in order; ran: {dict(counts)}",
                time.perf_counter() - start,
            )

            start = time.perf_counter()
            for session in servers.servers["host2"].sessions():
                os.kill(session, signal.SIGKILL)  # host2 "goes down": its sshd's sessions die
            pool.wait_until(lambda s: s.workers == 5, timeout=60)
            results = list(pool.map(range(500)))
            counts = collections.Counter(where for where, _ in results)
            step(
                f"host2 down: its workers are gone, the pool goes on; ran: {dict(counts)}",
                time.perf_counter() - start,
            )
        for tmpl in (*templates, local):
            tmpl.close()
    finally:
        start = time.perf_counter()
        for host in hosts:
            host.close()
        step(
            "hosts closed: every remote process ended, private directories removed",
            time.perf_counter() - start,
        )


if __name__ == "__main__":
    main()
