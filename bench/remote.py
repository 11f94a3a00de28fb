"""Remote benchmark: anyfork.remote next to execnet and mitogen, over the same SSH server.

    .venv/bin/python bench/remote.py                 # ~1-2 minutes: 5 interleaved rounds
    .venv/bin/python bench/remote.py --quick         # smoke run: 2 short rounds
    .venv/bin/python bench/remote.py --destination user@host [--ssh-option -i --ssh-option key]

Without ``--destination`` the rows run against the OpenSSH server of the test suite
(``tests/sshd.py``: sshd on 127.0.0.1, this machine's own "remote host"), so every number is
one ssh hop over loopback and says what the software costs, not a network.

Rows, each measured in every round (rounds interleave the rows, so that the drift of a loaded
machine hits them alike); the table shows each row's median and best round:

* **connect**: a cold ``Host`` (ssh, authentication, the bootstrap, the agent, the forward);
  execnet's ``makegateway("ssh=...")``; mitogen's ``router.ssh()``;
* **process from a warm host**: ``host.new_exec().run(f)`` and ``host.new().run(f)``, one at a
  time: processes per second, and start-to-first-byte (the call to the first byte ``f`` sends);
  execnet's gateway creation (each one a new ssh connection: it has nothing lighter) and
  mitogen's ``router.fork(via=ctx)`` (a fork on the host, through its connection);
* **template fork**: ``template.fork().run(f)`` of a remote template (forked on the host, its
  connection fetched from the agent), and of a local one;
* **pool of 8 workers**: ``BlockingPool([(template, 8)], f, idle=8)`` until all 8 are ready,
  remote and local;
* **worker from a warm host**: ``host.new().rpc(f)`` until its first result;
* **RPC round trip**: a trivial call, one at a time (anyfork: sync backend, blocking and asyncio
  clients), execnet's channel ``send``/``receive``, mitogen's ``context.call``;
* **pipelined**: calls per second with many in flight (anyfork's asyncio client,
  ``BlockingClient.map``), execnet (sends, then receives), mitogen (``call_async``).

Targets (for the final step), judged on the medians: remote RPC round trip within 1.5x of
execnet's channel round trip or better; remote process creation at least 5x execnet's gateway
creation rate; a remote worker from a warm host under 20 ms.

Peers (execnet, mitogen) are bench-only dependencies, installed here with pip when missing; a
peer that does not install or run is reported as not available.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import operator
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the SSH servers of the test suite

import anyfork  # noqa: E402
from anyfork.remote import Host  # noqa: E402

PEERS = ("execnet", "mitogen")
HELLO = "def hello(sock):\n    sock.sendall(b'x')\n"
ECHO = "while 1:\n    channel.send(channel.receive())\n"


def note(msg: str) -> None:
    print(f"bench/remote.py: {msg}", flush=True)


def install_peers() -> None:
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if not missing:
        return
    note(f"installing {', '.join(missing)} into {sys.prefix}")
    try:
        rc = subprocess.call([sys.executable, "-m", "pip", "install", "-q", *missing], timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        note(f"pip failed ({exc}); those rows will say 'not available'")
        return
    if rc != 0:
        note(f"pip install exited {rc}; the missing peers' rows will say 'not available'")


class Results:
    """Per row: one value per round (seconds, or a rate)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {}
        self.units: dict[str, str] = {}
        self.missing: dict[str, str] = {}

    def add(self, key: str, value: float, unit: str) -> None:
        self.rows.setdefault(key, []).append(value)
        self.units[key] = unit

    def median(self, key: str) -> float | None:
        values = self.rows.get(key)
        return statistics.median(values) if values else None

    def show(self) -> None:
        width = max(len(k) for k in [*self.rows, *self.missing])
        print(f"\n{'row':<{width}}  {'median':>12}  {'best':>12}")
        for key, values in self.rows.items():
            unit = self.units[key]
            best = min(values) if unit == "ms" else max(values)
            print(
                f"{key:<{width}}  {_fmt(statistics.median(values), unit):>12}  "
                f"{_fmt(best, unit):>12}"
            )
        for key, why in self.missing.items():
            print(f"{key:<{width}}  not available ({why})")


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f} ms" if unit == "ms" else f"{value:,.0f} /s"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- anyfork ---------------------------------------------------------------------------------------


def bench_anyfork(res: Results, host: Host, opts: dict[str, Any], n: int, calls: int) -> None:
    res.add("connect: anyfork Host", timed(lambda: _cold(opts)) * 1e3, "ms")
    for make in ("new_exec", "new"):
        firsts = []
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            sock = getattr(host, make)().eval(HELLO).run_blocking("hello", timeout=60)
            sock.recv(1)
            firsts.append(time.perf_counter() - t0)
            sock.close()
        res.add(f"process: host.{make}().run, processes", n / (time.perf_counter() - start), "/s")
        res.add(f"process: host.{make}().run, first byte", statistics.median(firsts) * 1e3, "ms")

    # A remote template forks on the host (its children's connections fetched from the agent),
    # and the same row here, for comparison.
    tmpl = host.new().eval(HELLO)
    local = anyfork.new().eval(HELLO)
    try:
        for name, source in (("remote template.fork()", tmpl), ("local template.fork()", local)):
            firsts = []
            start = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                sock = source.fork().run_blocking("hello", timeout=60)
                sock.recv(1)
                firsts.append(time.perf_counter() - t0)
                sock.close()
            res.add(f"process: {name}.run, processes", n / (time.perf_counter() - start), "/s")
            res.add(f"process: {name}.run, first byte", statistics.median(firsts) * 1e3, "ms")
        for name, source in (("remote", tmpl), ("local", local)):
            took = timed(functools.partial(_pool8, source))
            res.add(f"pool: 8 {name} workers, start-up", took * 1e3, "ms")
    finally:
        tmpl.close()
        local.close()

    def worker() -> None:
        client = host.new().rpc_blocking("operator:pos", timeout=60)
        client(1)
        client.close()

    res.add(
        "worker: host.new().rpc, first result",
        statistics.median([timed(worker) for _ in range(max(3, n // 4))]) * 1e3,
        "ms",
    )

    client = host.new().rpc_blocking("operator:pos", timeout=60)
    try:
        client(1)
        rtts = [timed(lambda: client(1)) for _ in range(calls)]
        res.add("rpc round trip: anyfork blocking", statistics.median(rtts) * 1e3, "ms")
        start = time.perf_counter()
        client.map(range(calls * 10), chunksize=1)
        res.add(
            "pipelined: anyfork BlockingClient.map",
            calls * 10 / (time.perf_counter() - start),
            "/s",
        )
    finally:
        client.close()

    async def on_loop() -> None:
        aclient = await host.new().rpc("operator:pos", timeout=60)
        try:
            await aclient(1)
            rtts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await aclient(1)
                rtts.append(time.perf_counter() - t0)
            res.add("rpc round trip: anyfork asyncio", statistics.median(rtts) * 1e3, "ms")
            start = time.perf_counter()
            await asyncio.gather(*(aclient(i) for i in range(calls * 10)))
            res.add("pipelined: anyfork asyncio", calls * 10 / (time.perf_counter() - start), "/s")
        finally:
            await aclient.aclose()

    asyncio.run(on_loop())


def _pool8(tmpl: anyfork.Process) -> None:
    """A pool of 8 workers forked from ``tmpl``, from its creation until all 8 are ready."""
    templates: Any = [(tmpl, 8)]
    pool = anyfork.BlockingPool(templates, "operator:pos", idle=8)
    try:
        pool.wait_until(lambda s: s.workers == 8 and s.starting == 0, timeout=120)
    finally:
        pool.close()


def _cold(opts: dict[str, Any]) -> None:
    with Host(opts["destination"], ssh_options=opts["ssh_options"]) as cold:
        cold.python_version  # noqa: B018  # connected: that is the row


# -- execnet ---------------------------------------------------------------------------------------


def bench_execnet(res: Results, spec: str, n: int, calls: int) -> None:
    import execnet

    def gateway() -> None:
        gw = execnet.makegateway(spec)
        gw.exit()

    times = [timed(gateway) for _ in range(max(2, n // 4))]
    res.add("connect: execnet makegateway", statistics.median(times) * 1e3, "ms")
    res.add("process: execnet makegateway, gateways", 1 / statistics.median(times), "/s")
    gw = execnet.makegateway(spec)
    try:
        ch = gw.remote_exec(ECHO)
        ch.send(1)
        ch.receive()

        def call() -> None:
            ch.send(1)
            ch.receive()

        res.add(
            "rpc round trip: execnet channel",
            statistics.median([timed(call) for _ in range(calls)]) * 1e3,
            "ms",
        )
        start = time.perf_counter()
        for i in range(calls * 10):
            ch.send(i)
        for _ in range(calls * 10):
            ch.receive()
        res.add("pipelined: execnet channel", calls * 10 / (time.perf_counter() - start), "/s")
    finally:
        gw.exit()


# -- mitogen ---------------------------------------------------------------------------------------


def bench_mitogen(res: Results, opts: dict[str, Any], n: int, calls: int) -> None:
    import mitogen.master

    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        host, user = opts["destination"], None
        if "@" in host:
            user, host = host.split("@", 1)
        args = {"hostname": host, "username": user, "ssh_args": list(opts["ssh_options"])}
        start = time.perf_counter()
        ctx = router.ssh(python_path="python3", **args)
        res.add("connect: mitogen router.ssh", (time.perf_counter() - start) * 1e3, "ms")
        ctx.call(operator.pos, 1)
        forks = []
        for _ in range(max(3, n // 4)):
            t0 = time.perf_counter()
            sub = router.fork(via=ctx)
            sub.call(operator.pos, 1)
            forks.append(time.perf_counter() - t0)
            sub.shutdown(wait=True)
        res.add("process: mitogen fork(via=ssh), first call", statistics.median(forks) * 1e3, "ms")
        res.add(
            "rpc round trip: mitogen call",
            statistics.median([timed(lambda: ctx.call(operator.pos, 1)) for _ in range(calls)])
            * 1e3,
            "ms",
        )
        start = time.perf_counter()
        receivers = [ctx.call_async(operator.pos, i) for i in range(calls * 10)]
        for receiver in receivers:
            receiver.get().unpickle()
        res.add("pipelined: mitogen call_async", calls * 10 / (time.perf_counter() - start), "/s")
        ctx.shutdown(wait=True)
    finally:
        broker.shutdown()
        broker.join()


# -- main ------------------------------------------------------------------------------------------


def targets(res: Results) -> None:
    print("\nTargets (medians):")
    rtt, peer = (
        res.median("rpc round trip: anyfork blocking"),
        res.median("rpc round trip: execnet channel"),
    )
    if rtt is not None and peer is not None:
        print(
            f"  RPC round trip {rtt:.3f} ms vs execnet {peer:.3f} ms: {rtt / peer:.2f}x "
            f"(target <= 1.5x) {'met' if rtt <= 1.5 * peer else 'NOT met'}"
        )
    rate = res.median("process: host.new().run, processes")
    gws = res.median("process: execnet makegateway, gateways")
    if rate is not None and gws is not None:
        print(
            f"  process creation {rate:,.0f}/s vs execnet gateways {gws:,.1f}/s: "
            f"{rate / gws:.0f}x (target >= 5x) {'met' if rate >= 5 * gws else 'NOT met'}"
        )
    worker = res.median("worker: host.new().rpc, first result")
    if worker is not None:
        print(
            f"  worker from a warm host {worker:.1f} ms (target < 20 ms) "
            f"{'met' if worker < 20 else 'NOT met'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds (smoke run)")
    parser.add_argument("--destination", help="a real host (default: the test suite's sshd)")
    parser.add_argument("--ssh-option", action="append", default=[], help="repeatable")
    parser.add_argument("--no-setup", action="store_true", help="do not pip-install the peers")
    args = parser.parse_args()
    if not args.no_setup:
        install_peers()
    rounds, n, calls = (2, 10, 100) if args.quick else (5, 40, 500)
    servers = None
    if args.destination:
        opts = {"destination": args.destination, "ssh_options": tuple(args.ssh_option)}
    else:
        from sshd import SshServers

        servers = SshServers().start()
        opts = {"destination": "host1", "ssh_options": servers.ssh_options}
        note(f"against the test suite's {servers.kind} server on 127.0.0.1")
    spec = f"ssh={' '.join([*opts['ssh_options'], opts['destination']])}//python=python3"
    res = Results()
    try:
        with Host(opts["destination"], ssh_options=opts["ssh_options"]) as host:
            for r in range(rounds):
                note(f"round {r + 1}/{rounds}")
                bench_anyfork(res, host, opts, n, calls)
                for name, run in (
                    ("execnet", lambda: bench_execnet(res, spec, n, calls)),
                    ("mitogen", lambda: bench_mitogen(res, opts, n, calls)),
                ):
                    if name in res.missing:
                        continue
                    try:
                        run()
                    except Exception as exc:  # a peer that fails is reported, not fatal
                        res.missing[name] = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        if servers is not None:
            servers.stop()
    res.show()
    targets(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
