"""anyfork in two minutes: a prefork echo server, and one freshly exec'd process.

Run it with ``make demo`` (or ``.venv/bin/python examples/demo.py``).  It

1. makes a *template*: a small process forked from anyfork's default template that imports the
   server code once, so that every worker forked from it starts with that code already loaded;
2. hands the template a listening TCP socket, once: every worker forked afterwards inherits it
   (the classic prefork idiom, done by passing the fd rather than by forking this program);
3. forks 4 workers, connects 12 clients and shows which worker answered each and how fast;
4. stops the workers by closing our end of their sockets, and checks that nothing is left;
5. starts one process with ``new_exec`` (a fresh interpreter; this program is never forked);
6. turns a forked process into an RPC server: calls stream progress events before their results,
   and an exception raised in the worker comes back as its own type.

The worker code is in ``demo_workers.py`` next to this file.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import statistics
import sys
import time

from demo_workers import InventoryError, check_stock, crunch, serve, whoami

import anyfork

WORKERS = 4
CLIENTS = 12
LINES_PER_CLIENT = 3


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def step(what: str, seconds: float) -> None:
    print(f"  {ms(seconds)}  {what}")


async def read_to_eof(sock: socket.socket) -> bytes:
    """Read what a child sends until it closes its end (it has finished, or exited)."""
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited and been reaped (or is a zombie nobody will use again)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # the read can race with the exit
        return True


async def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    """Bounded wait for the OS to confirm that processes have gone."""
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def client(port: int, number: int) -> list[tuple[str, float]]:
    """Connect, send a few lines, and note which worker echoed each line and how long it took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for line in range(LINES_PER_CLIENT):
            start = time.perf_counter()
            writer.write(f"hello from client {number}, line {line}\n".encode())
            reply = await asyncio.wait_for(reader.readline(), 10)
            worker_id, _pid, _echo = reply.decode().split(" ", 2)
            answers.append((worker_id, time.perf_counter() - start))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


async def prefork_server() -> None:
    print(f"demo pid {os.getpid()}\n")
    print("1. A template with the server code preloaded")
    start = time.perf_counter()
    # new() forks from anyfork's default template (exec'd on first use, then kept); require()
    # imports our module there once, so the workers forked below never import it themselves.
    template = anyfork.new().require("demo_workers")
    template_pid = await template.wait_started(timeout=10)
    step(
        f"template pid {template_pid} forked (this first new() also exec'd anyfork's default "
        f"template)",
        time.perf_counter() - start,
    )

    # The listening socket is created here but handed to the template, which keeps it: every
    # worker forked from the template gets a copy.  Our own copy is not needed after that.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    template.send_fh(listener)  # duplicated at once: closing ours right away is fine
    listener.close()
    print(f"\n2. Listening on 127.0.0.1:{port} (the socket now lives in the template only)")

    # Each worker gets (its anyfork socket, the listener, its id): args arrive in the order sent.
    print(f"\n3. Forking {WORKERS} workers from the template")
    start = time.perf_counter()
    procs = [template.fork().send_arg(f"w{i}") for i in range(WORKERS)]
    socks = await asyncio.gather(*(proc.run(serve, timeout=10) for proc in procs))
    worker_pids = [pid for pid in (proc.pid for proc in procs) if pid is not None]
    # The time includes the template's one import of demo_workers, queued before the forks.
    step(f"{WORKERS} workers running, pids {worker_pids}", time.perf_counter() - start)

    print(f"\n4. {CLIENTS} clients, {LINES_PER_CLIENT} lines each, all at once")
    start = time.perf_counter()
    results = await asyncio.gather(*(client(port, n) for n in range(CLIENTS)))
    step(f"{CLIENTS * LINES_PER_CLIENT} echoes", time.perf_counter() - start)
    per_worker = collections.Counter(worker for answers in results for worker, _ in answers)
    latencies = sorted(seconds for answers in results for _, seconds in answers)
    for worker, count in sorted(per_worker.items()):
        print(f"             {worker} answered {count:2d} lines")
    print(
        f"             round trip: median {ms(statistics.median(latencies)).strip()}, "
        f"max {ms(latencies[-1]).strip()}"
    )

    print("\n5. Shutting down")
    start = time.perf_counter()
    # Half-close our end of each worker's socket: the worker sees EOF and returns, and when its
    # process exits we see EOF in turn.  That is the whole shutdown protocol.
    for sock in socks:
        sock.shutdown(socket.SHUT_WR)
    await asyncio.gather(*(read_to_eof(sock) for sock in socks))
    for sock in socks:
        sock.close()
    # The template exits when we close it; it has reaped its workers.  (anyfork's default
    # template stays, for the next new(), and exits with this program.)
    template.close()
    all_gone = await wait_gone([*worker_pids, template_pid])
    step(
        "workers and template exited" if all_gone else "SOME PROCESSES ARE STILL RUNNING",
        time.perf_counter() - start,
    )


async def exec_one() -> None:
    print("\n6. One process with new_exec(): a fresh interpreter; this program is not forked")
    start = time.perf_counter()
    proc = anyfork.new_exec()
    with await proc.run(whoami, timeout=10) as sock:
        facts = json.loads(await read_to_eof(sock))
    step(f"pid {facts['pid']} answered", time.perf_counter() - start)
    print(f"             its parent is pid {facts['ppid']} (this demo is {os.getpid()})")
    print(
        f"             asyncio imported there: {facts['asyncio_imported']} "
        f"({facts['modules']} modules loaded, vs {len(sys.modules)} here)"
    )
    await wait_gone([facts["pid"]])
    print(f"             it has exited with code {proc.returncode}")


async def rpc_worker() -> None:
    print("\n7. RPC: progress events streamed before each result, and an exception by type")
    start = time.perf_counter()

    def on_event(kind: str, label: str, done: int, steps: int) -> None:
        # Runs in this process, in the order the worker produced events and results.
        print(f"             {kind:8s} {label}: {done}/{steps}")

    # The worker is forked from the default template and serves crunch() (sync backend: one
    # call at a time, no event loop in the child); events go to on_event.
    async with (
        await anyfork.new()
        .require("demo_workers")
        .rpc(crunch, on_event=on_event, timeout=10) as client
    ):

        async def one(label: str, steps: int) -> dict[str, object]:
            result: dict[str, object] = await client(label, steps)
            print(f"             result   {label}: total {result['total']}")
            return result

        # Both calls are sent at once; the worker runs them in turn.  Each result is printed
        # as it arrives: after its own progress events and before the next call's.
        first, _ = await asyncio.gather(one("job-a", 3), one("job-b", 2))
        step(
            f"2 calls with 5 progress events, worker pid {first['pid']}",
            time.perf_counter() - start,
        )

    async with await anyfork.new().rpc(check_stock, timeout=10) as client:
        print(f"             check_stock('apples', 2) -> {await client('apples', 2)} left")
        try:
            await client("pears", 1)
        except InventoryError as exc:  # the worker's own exception type, rebuilt here
            print(f"             check_stock('pears', 1) raised {type(exc).__name__}: {exc}")
            print(
                f"             (remote traceback attached as __cause__: "
                f"{type(exc.__cause__).__name__})"
            )
        print(f"             the worker kept serving: apples -> {await client('apples', 3)}")


async def pool_demo() -> None:
    print("\n8. A pool: scales up under load, survives a killed worker, shrinks to zero when idle")
    from demo_workers import square

    # Workers are forked from a template (here anyfork.new(), with demo_workers imported once)
    # and each serves square() over RPC: the pool starts with none (idle=0), starts a second
    # worker as soon as one has a call in flight (load=1, start=0: no pacing), and stops them
    # 0.2 s after they last had work.
    start = time.perf_counter()
    template = anyfork.new().require("demo_workers")
    async with anyfork.Pool(template, square, max=2, idle=0, load=1, start=0, stop=0.2) as pool:
        results = [r async for r in pool.map(range(1000))]
        elapsed = time.perf_counter() - start
        assert results == [x * x for x in range(1000)]
        stats = pool.statistics()
        step(
            f"1000 calls through map(), in order ({1000 / elapsed:,.0f} calls/s, "
            f"workers started: {stats.started})",
            elapsed,
        )

        # Kill a worker from outside: the pool notices without a call, and the next call is
        # served by a new worker.  Only calls that were on the dead worker would have failed.
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        start = time.perf_counter()
        stats = await pool.wait_until(lambda s: s.died == 1, timeout=10)
        answer = await pool(12)
        step(
            f"killed worker {victim}; pool noticed (died={stats.died}), then pool(12) = {answer}",
            time.perf_counter() - start,
        )

        start = time.perf_counter()
        await pool.wait_until(lambda s: s.workers == 0, timeout=10)
        step(
            "idle workers stopped, one per 0.2 s: the pool is down to 0 workers",
            time.perf_counter() - start,
        )
    template.close()


async def main() -> None:
    began = time.perf_counter()
    await prefork_server()
    await exec_one()
    await rpc_worker()
    await pool_demo()
    print(f"\ndone in {ms(time.perf_counter() - began).strip()}")


if __name__ == "__main__":
    asyncio.run(main())
    from remote_demo import main as remote_demo

    remote_demo()  # (a pool spanning two loopback "hosts", when sshd is installed)
