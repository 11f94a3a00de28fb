"""Every serialiser over real workers: calls, results and events round trip; cloudpickle carries
lambdas and closures; a serialiser the worker cannot build, an unknown name or a value the
serialiser refuses fail clearly, at start-up or in that call only.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

import anyfork
import rpc_faces
import rpc_funcs
from helpers import run
from rpc_faces import Face
from test_rpc_wire import Marshal

face = rpc_faces.face  # the fixture: a test taking it runs with each face


class _Events:
    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.items.append(args)


@pytest.mark.parametrize(
    ("serializer", "call", "expected"),
    [
        ("pickle", ((1, (2, 3)), {"k": {4}}), ([1, (2, 3)], {"k": {4}})),
        ("cloudpickle", ((1, (2, 3)), {"k": {4}}), ([1, (2, 3)], {"k": {4}})),
        ("json", ((1, [2, 3]), {"k": "v"}), [[1, [2, 3]], {"k": "v"}]),
        # msgpack: bytes stay bytes, str stays str, tuples arrive as lists.
        (
            "msgpack",
            ((b"\x00\xff", "h\u00e9"), {"k": [1.5]}),
            [[b"\x00\xff", "h\u00e9"], {"k": [1.5]}],
        ),
        ("test_rpc_wire:Marshal", ((1, 2), {"k": 3}), ([1, 2], {"k": 3})),
    ],
)
@pytest.mark.parametrize("backend", ["sync", "async"])
def test_calls_results_and_events_round_trip(
    face: Face, serializer: str, call: Any, expected: Any, backend: Any
) -> None:
    events = _Events()
    kw: dict[str, Any] = {"serializer": serializer, "backend": backend, "on_event": events}
    client = face.rpc(anyfork.new(), "rpc_funcs:echo", **kw)
    try:
        assert face.call(client, *call[0], **call[1]) == expected
    finally:
        face.close(client)
    client = face.rpc(anyfork.new(), "rpc_funcs:progress", **kw)
    try:
        assert face.call(client, 7, 2) == 7
    finally:
        face.close(client)
    assert [list(e) for e in events.items] == [["progress", 7, 0], ["progress", 7, 1]]


def test_cloudpickle_carries_lambdas_and_closures() -> None:
    def closure_factory(n: int) -> Any:
        return lambda x: x * n

    async def main() -> None:
        async with await anyfork.rpc(
            anyfork.new(), "rpc_funcs:apply", serializer="cloudpickle", timeout=10
        ) as client:
            assert await client(lambda x: x * 2, 21) == 42
            assert await client(closure_factory(3), 5) == 15
        async with await anyfork.rpc(
            anyfork.new(), "rpc_funcs:make_adder", serializer="cloudpickle", timeout=10
        ) as client:
            adder = await client(10)  # a closure made in the worker, sent back
            assert adder(5) == 15

    run(main())


def test_plain_pickle_refuses_a_lambda_in_the_parent() -> None:
    async def main() -> None:
        async with await anyfork.rpc(anyfork.new(), "rpc_funcs:apply", timeout=10) as client:
            with pytest.raises(anyfork.EncodeError, match="'pickle'") as info:
                await client(lambda x: x, 1)
            assert info.value.side == "parent"
            assert await client(abs, -3) == 3  # the connection stays usable

    run(main())


def test_msgpack_refuses_what_it_cannot_carry_in_that_call_only() -> None:
    async def main() -> None:
        async with await anyfork.rpc(
            anyfork.new(), "rpc_funcs:ident", serializer="msgpack", timeout=10
        ) as client:
            with pytest.raises(anyfork.EncodeError, match="'msgpack'"):
                await client({1, 2})  # sets are not msgpack
            assert await client([1, "x"]) == [1, "x"]

    run(main())


def test_json_refuses_bytes_in_the_parent_and_closures_in_the_child() -> None:
    async def main() -> None:
        async with await anyfork.rpc(
            anyfork.new(), "rpc_funcs:make_adder", serializer="json", timeout=10
        ) as client:
            with pytest.raises(anyfork.EncodeError, match="'json'") as info:
                await client(b"bytes are not json")
            assert info.value.side == "parent"
            with pytest.raises(anyfork.EncodeError, match="cannot encode the result") as info:
                await client(1)  # a closure comes back
            assert info.value.side == "child"
            with pytest.raises(anyfork.EncodeError):
                await client(2)  # still usable

    run(main())


def test_unknown_serializer_name_fails_before_spawning() -> None:
    async def main() -> None:
        proc = anyfork.new()
        with pytest.raises(ValueError, match="unknown serialiser 'yaml'"):
            await anyfork.rpc(proc, "rpc_funcs:ident", serializer="yaml")
        with pytest.raises(ValueError, match="needs callable dumps"):
            await anyfork.rpc(proc, "rpc_funcs:ident", serializer="os:path")
        proc.close()

    run(main())


def test_serializer_the_worker_cannot_build_fails_at_startup() -> None:
    """A mismatch: the parent has the serialiser, the worker cannot import it."""
    module = types.ModuleType("parent_only_codec")
    module.dumps = lambda obj: repr(obj).encode()  # type: ignore[attr-defined]
    module.loads = lambda data: data  # type: ignore[attr-defined]
    module.codec = module  # type: ignore[attr-defined]
    sys.modules["parent_only_codec"] = module
    try:

        async def main() -> None:
            with pytest.raises(ModuleNotFoundError, match="parent_only_codec") as info:
                await anyfork.rpc(
                    anyfork.new(),
                    "rpc_funcs:ident",
                    serializer="parent_only_codec:codec",
                    timeout=10,
                )
            assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
            assert "failed to start" in "".join(getattr(info.value, "__notes__", []))

        run(main())
    finally:
        del sys.modules["parent_only_codec"]


def test_user_serializer_protocol_module_attr() -> None:
    """``"module:attr"``: any object with dumps/loads, imported by name on both sides."""

    async def main() -> None:
        events = _Events()
        async with await anyfork.rpc(
            anyfork.new(),
            "rpc_funcs:progress",
            serializer="test_rpc_wire:Marshal",
            on_event=events,
            timeout=10,
        ) as client:
            assert await client(3, 1) == 3
        assert events.items == [("progress", 3, 0)]

    run(main())


@pytest.mark.parametrize("which", ["instance", "class"])
def test_a_serializer_object_is_used_here_and_found_by_the_worker(face: Face, which: str) -> None:
    """``serializer=obj``: the parent uses the object, the worker imports it by the reference
    derived from it (the global its module binds it to, or a class's qualname)."""
    ser = rpc_funcs.TAGGED if which == "instance" else Marshal
    events = _Events()
    client = face.rpc(anyfork.new(), "rpc_funcs:progress", serializer=ser, on_event=events)
    try:
        assert face.call(client, 3, 1) == 3
    finally:
        face.close(client)
    assert events.items == [("progress", 3, 0)]


def test_a_serializer_the_worker_cannot_find_is_refused_before_spawning() -> None:
    class Local:
        dumps = staticmethod(rpc_funcs.dumps)
        loads = staticmethod(rpc_funcs.loads)

    proc = anyfork.new()
    try:
        for ser in (Local, Local(), rpc_funcs.Tagged()):
            with pytest.raises(ValueError, match="cannot be found by the worker") as info:
                anyfork.rpc_blocking(proc, "rpc_funcs:ident", serializer=ser)
            assert isinstance(info.value, anyfork.AnyforkError)
        with pytest.raises(TypeError, match="an object with dumps"):
            anyfork.rpc_blocking(proc, "rpc_funcs:ident", serializer=object())  # type: ignore[arg-type]
    finally:
        proc.close()
