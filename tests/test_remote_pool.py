"""One pool spanning hosts: ``Pool([(template, cap), ...], func)`` with local and remote
templates (each face: ``Pool``, ``BlockingPool``, ``PoolExecutor``), against the two sshd
servers ("host1", "host2": both this machine, so the tests see in ``/proc`` where each worker
runs)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

import anyfork
import pool_faces
import remote_support
from anyfork.remote import Host
from helpers import eventually
from pool_faces import FACES, Face
from remote_support import agent_of, connection_of
from sshd import SshServers, descendants

sshd = remote_support.sshd
remote_clean = remote_support.remote_clean

pytestmark = pytest.mark.usefixtures("remote_clean")


face = pool_faces.face  # the fixture: each test taking it runs on every face


@pytest.fixture
def hosts(sshd: SshServers) -> Iterator[list[Host]]:
    made = [Host(name, ssh_options=sshd.ssh_options) for name in ("host1", "host2")]
    try:
        for host in made:
            host.connect_blocking(timeout=60)
        yield made
    finally:
        for host in made:
            host.close()


def where(pid: int, local: anyfork.Process, hosts: list[Host]) -> str:
    """Which template a worker runs under: ``"local"`` or the host's name."""
    assert local.pid is not None
    if pid in descendants(local.pid):
        return "local"
    for host in hosts:
        if pid in descendants(agent_of(host)):
            return host.destination
    raise AssertionError(f"worker {pid} runs under none of the templates")


def test_a_pool_spans_hosts_within_each_cap_and_survives_a_lost_host(
    face: Face, hosts: list[Host]
) -> None:
    # A multiprocessing Manager may exist (as in any test run after one used it): each
    # worker's start-up step then gives it the parent's authkey, on the hosts as well.
    import multiprocessing.managers  # noqa: F401

    local = anyfork.new()
    remote = [host.new() for host in hosts]
    templates: Any = [(local, 1), (remote[0], 2), (remote[1], 2)]
    try:
        # Five workers at once (idle=5; max is the caps' sum), least-loaded first.
        face.open(templates, "os:getpid", idle=5)
        face.call()  # (an executor starts its workers with the first call)
        stats = face.wait_until(lambda s: s.workers == 5 and s.starting == 0)
        assert stats.failed_starts == 0
        placed = sorted(where(pid, local, hosts) for pid in face.worker_pids())
        assert placed == ["host1", "host1", "host2", "host2", "local"]
        pending = [face.start() for _ in range(20)]
        assert {where(p.result(), local, hosts) for p in pending} <= {"local", "host1", "host2"}
        # host2's connection is lost: its workers die, it gets no more workers, and the pool
        # goes on with the others (a call of the lost host's fails; the rest complete).
        os.kill(connection_of(hosts[1]).ssh_pid, signal.SIGKILL)
        face.wait_until(lambda s: s.workers <= 3 and s.died >= 2)
        results = [face.call() for _ in range(20)]
        assert {where(pid, local, hosts) for pid in results} <= {"local", "host1"}
        assert sorted(where(p, local, hosts) for p in face.worker_pids()) == [
            "host1",
            "host1",
            "local",
        ]
        face.close()
    finally:
        for tmpl in (local, *remote):
            tmpl.close()


def test_a_list_of_templates_is_checked_at_once() -> None:
    local = anyfork.new()
    try:
        bad: list[Any] = [[(local, 0)], [(local, "2")], [local], [], [("x", 1)]]
        for templates in bad:
            with pytest.raises((TypeError, ValueError), match="template"):
                anyfork.BlockingPool(templates, "os:getpid")
    finally:
        local.close()


def test_a_remote_worker_of_a_pool_is_killed_through_its_host(hosts: list[Host]) -> None:
    """Closing the fast way kills running workers: a remote one by its host (its pid is not
    one of this machine's processes to the parent)."""
    tmpl = hosts[0].new().eval("import select\ndef block():\n    select.select([], [], [])\n")
    templates: Any = [(tmpl, 1)]
    face = FACES["BlockingPool"]()
    try:
        face.open(templates, "block", idle=1)
        face.wait_until(lambda s: s.workers == 1 and s.starting == 0)
        (pid,) = face.worker_pids()
        pending = face.start()
        face.wait_until(lambda s: s.busy == 1)
        face.close(cancel=True)
        with pytest.raises(anyfork.AnyforkError):
            pending.result()
        eventually(lambda: remote_support.pid_gone(pid), what="the remote worker to be killed")
    finally:
        face.shutdown()
        tmpl.close()
