"""Serialisers for RPC: how calls, results and events become bytes.  Both sides build the same one.

Built in (by name; the README's table says what each carries): ``"pickle"`` (default; protocol
5, with big ``bytes``/``bytearray``, up to three containers deep, and every ``PickleBuffer``
out of band, rebuilt from views of the received frame; in a batch ``bytes`` travel in band:
looking for big ones would cost more than the calls), ``"cloudpickle"`` (results are loaded
with plain ``pickle``), ``"json"``, ``"msgpack"`` (``use_bin_type=True``), and ``"bytes"`` /
``"str"`` (exactly one value per frame: they cannot carry a batch).

**User serialisers**: the object, or its ``"module:attr"`` name; the child imports it by that
reference.  It needs ``dumps(obj) -> bytes`` and ``loads(data: bytes) -> object`` (raising
anything: an ``EncodeError``/``DecodeError``), a module with two such functions included.  A
call travels as ``dumps([list_of_args, dict_of_kwargs])``, a result as ``dumps(result)``, an
event as ``dumps(list_of_args)``, a batch as ``dumps([first_args, second_args, ...])`` (one list
per parameter) and its results as ``dumps([result, ...])``.  Exceptions raised by the RPC
function always travel with ``pickle``.

This module runs in every worker: stdlib only; ``json``/``msgpack``/``cloudpickle`` are imported
only when chosen.
"""

from __future__ import annotations

import pickle
import struct
from itertools import repeat as _repeat

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, NoReturn

    Chunks = list[bytes | bytearray | memoryview]
    Buffer = bytes | bytearray | memoryview

__all__ = ["BUILTIN", "Codec", "get", "of"]

BUILTIN = ("pickle", "cloudpickle", "json", "msgpack", "bytes", "str")

#: Buffers at least this big travel out of band with the pickle serialiser.
OOB_THRESHOLD = 64 << 10

_COUNT = struct.Struct(">I")
_SIZE = struct.Struct(">Q")
_NO_BUFFERS = _COUNT.pack(0)


class Codec:
    """The serialiser as the RPC layer uses it (both sides).  ``dump_*`` return buffers whose
    concatenation is the payload (big ones are written unjoined); failures raise what the
    library raises (the caller makes them ``EncodeError``/``DecodeError``)."""

    name = ""
    #: Whether it can carry a batch.
    batches = True

    def dump_value(self, value: Any) -> Chunks:
        raise NotImplementedError

    def load_value(self, data: Buffer) -> Any:
        raise NotImplementedError

    def dump_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Chunks:
        return self.dump_value([list(args), kwargs])

    def load_call(self, data: Buffer) -> tuple[tuple[Any, ...], dict[str, Any]]:
        value = self.load_value(data)
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not isinstance(value[0], (list, tuple))
            or not isinstance(value[1], dict)
        ):
            raise ValueError("a call payload is [args, kwargs]")
        return tuple(value[0]), value[1]

    def dump_event(self, args: tuple[Any, ...]) -> Chunks:
        return self.dump_value(list(args))

    def load_event(self, data: Buffer) -> tuple[Any, ...]:
        value = self.load_value(data)
        if not isinstance(value, (list, tuple)):
            raise ValueError("an event payload is a list of arguments")
        return tuple(value)

    def dump_batch(self, columns: list[list[Any]]) -> Chunks:
        """By column: lists of plain values serialise (and load) several times faster than lists
        of tuples.  A map of a range sends its slices (``_batching.check_columns``) as lists."""
        given: list[Any] = columns  # (a range stands in for a list)
        return self.dump_value([list(c) if type(c) is range else c for c in given])

    def load_batch(self, data: Buffer) -> tuple[list[Any], int]:
        """The columns (at least one, all as long), and how many calls they make."""
        columns = _a_list(self.load_value(data), _NOT_COLUMNS)
        if not columns:
            raise ValueError(_NOT_COLUMNS)
        for j, column in enumerate(columns):
            kind = type(column)
            # (a map of a range; PoolExecutor.map's function column)
            if kind is not list and kind is not range and kind is not Same:
                columns[j] = column = _a_list(column, _NOT_COLUMNS)
            if len(column) != len(columns[0]):
                raise ValueError(_NOT_COLUMNS)
        return columns, len(columns[0])

    def dump_results(self, results: list[Any]) -> Chunks:
        return self.dump_value(results)

    def load_results(self, data: Buffer) -> list[Any]:
        return _a_list(self.load_value(data), "a batch's results are a list")


_NOT_COLUMNS = "a batch payload is a list of argument lists, all as long"


class Same:
    """A column of one value ``n`` times: ``PoolExecutor.map``'s function, for ``apply``.
    Sliced, and pickled, as ``(value, n)``: the value travels once per batch, not once per
    item, and the worker runs it on the other columns without looking at each item."""

    __slots__ = ("n", "value")

    def __init__(self, value: Any, n: int) -> None:
        self.value, self.n = value, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        return _repeat(self.value, self.n)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Same(self.value, len(range(self.n)[index]))
        range(self.n)[index]  # (IndexError beyond the end)
        return self.value

    def __delitem__(self, index: slice) -> None:
        self.n -= len(range(self.n)[index])

    def __reduce__(self) -> tuple[Any, ...]:
        return Same, (self.value, self.n)


def _a_list(value: Any, what: str) -> list[Any]:
    if type(value) is list:
        same: list[Any] = value
        return same
    if type(value) is tuple:
        return list(value)
    raise ValueError(what)


class _Pickle(Codec):
    """Protocol 5; payload: u32 n, n x u64 buffer sizes, the pickle stream, the n buffers."""

    name = "pickle"

    def dump_value(self, value: Any) -> Chunks:
        if _has_big_bytes(value, 3):
            # bytes and bytearray pickle in band (and pickle never offers them to a
            # reducer_override): wrap the big ones, in shallow copies of their containers.
            value = _wrap_big_bytes(value, 3)
        # Every PickleBuffer goes out of band (big bytes wrapped above, numpy arrays...): the
        # list's own append is the cheapest callback, and most values offer none at all.
        buffers: list[pickle.PickleBuffer] = []
        stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        if not buffers:
            return [_NO_BUFFERS + stream]  # inline: this runs for every call and result
        return _out_of_band(stream, buffers)

    def _dump(self, value: Any) -> Chunks:
        """``dump_value`` without the look for big bytes."""
        buffers: list[pickle.PickleBuffer] = []
        stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        if not buffers:
            return [_NO_BUFFERS + stream]
        return _out_of_band(stream, buffers)

    def dump_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Chunks:
        return self.dump_value((args, kwargs))

    def dump_event(self, args: tuple[Any, ...]) -> Chunks:
        return self.dump_value(args)

    def dump_batch(self, columns: list[list[Any]]) -> Chunks:
        # No look for big bytes (see the module docs): it cost 1.2 us per item, 10x pickle's.
        return self._dump(columns)

    def dump_results(self, results: list[Any]) -> Chunks:
        return self._dump(results)

    def load_value(self, data: Buffer) -> Any:
        view = memoryview(data)
        (count,) = _COUNT.unpack_from(view, 0)
        if not count:
            return pickle.loads(view[_COUNT.size :])
        pos = _COUNT.size
        sizes = [_SIZE.unpack_from(view, pos + i * _SIZE.size)[0] for i in range(count)]
        pos += count * _SIZE.size
        total = sum(sizes)
        end = len(view) - total
        if end < pos:
            raise ValueError("truncated pickle payload")
        buffers = []
        at = end
        for size in sizes:
            buffers.append(view[at : at + size])
            at += size
        return pickle.loads(view[pos:end], buffers=buffers)

    def load_call(self, data: Buffer) -> tuple[tuple[Any, ...], dict[str, Any]]:
        value = self.load_value(data)
        # The parent's dump_call made an (args, kwargs) tuple; check it without a detour.
        if type(value) is tuple and len(value) == 2:
            args, kwargs = value
            if type(args) is tuple and type(kwargs) is dict:
                return args, kwargs
        raise ValueError("a call payload is (args, kwargs)")


def _out_of_band(stream: bytes, buffers: list[pickle.PickleBuffer]) -> Chunks:
    raws = [b.raw() for b in buffers]  # contiguous by construction: pickle checked
    head = [_COUNT.pack(len(raws))]
    head.extend(_SIZE.pack(r.nbytes) for r in raws)
    chunks: Chunks = [b"".join(head), stream]
    chunks.extend(raws)
    return chunks


def _has_big_bytes(value: Any, depth: int) -> bool:
    """A shallow look for big ``bytes``/``bytearray``: plain loops, it runs for every call."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value) >= OOB_THRESHOLD
    if not depth:
        return False
    if kind is tuple or kind is list or kind is dict:
        for item in value.values() if kind is dict else value:
            if type(item) in _SCANNED and _has_big_bytes(item, depth - 1):
                return True
    return False


_SCANNED = frozenset((bytes, bytearray, tuple, list, dict))


class _BigBytes:
    """A big ``bytes``/``bytearray`` as an out-of-band buffer (the receiver copies it once)."""

    __slots__ = ("obj",)

    def __init__(self, obj: bytes | bytearray):
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> Any:
        return type(self.obj), (pickle.PickleBuffer(self.obj),)


def _wrap_big_bytes(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return _BigBytes(value) if len(value) >= OOB_THRESHOLD else value
    if depth and kind is tuple:
        return tuple(_wrap_big_bytes(v, depth - 1) for v in value)
    if depth and kind is list:
        return [_wrap_big_bytes(v, depth - 1) for v in value]
    if depth and kind is dict:
        return {k: _wrap_big_bytes(v, depth - 1) for k, v in value.items()}
    return value


class _CloudPickle(_Pickle):
    name = "cloudpickle"

    def __init__(self) -> None:
        import cloudpickle

        self._cloud = cloudpickle

    def dump_value(self, value: Any) -> Chunks:
        return [_COUNT.pack(0), self._cloud.dumps(value, protocol=5)]

    _dump = dump_value


class _Objects(Codec):
    """Any ``dumps``/``loads`` pair (json, msgpack, user serialisers)."""

    def __init__(self, name: str, dumps: Any, loads: Any) -> None:
        self.name = name
        self._dumps = dumps
        self._loads = loads

    def dump_value(self, value: Any) -> Chunks:
        data = self._dumps(value)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"serialiser {self.name!r} returned {type(data).__name__}, not bytes")
        return [data]

    def load_value(self, data: Buffer) -> Any:
        return self._loads(bytes(data))


class _Raw(Codec):
    batches = False

    def __init__(self, kind: type) -> None:
        self._kind = kind
        self.name = kind.__name__

    def dump_value(self, value: Any) -> Chunks:
        if type(value) is not self._kind and not (
            self._kind is bytes and isinstance(value, (bytes, bytearray, memoryview))
        ):
            raise TypeError(
                f"the {self.name!r} serialiser carries exactly one {self.name} value, "
                f"not {type(value).__name__}"
            )
        if isinstance(value, (bytes, bytearray, memoryview)):
            return [value]
        return [str(value).encode("utf-8", "surrogatepass")]

    def load_value(self, data: Buffer) -> Any:
        raw = bytes(data)
        if self._kind is str:
            return raw.decode("utf-8", "surrogatepass")
        return raw

    def _one(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
        if len(args) != 1 or kwargs:
            raise TypeError(
                f"the {self.name!r} serialiser carries exactly one {self.name} argument, "
                f"got {len(args)} positional and {len(kwargs or ())} keyword arguments"
            )
        return args[0]

    def dump_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Chunks:
        return self.dump_value(self._one(args, kwargs))

    def load_call(self, data: Buffer) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.load_value(data),), {}

    def dump_event(self, args: tuple[Any, ...]) -> Chunks:
        return self.dump_value(self._one(args))

    def load_event(self, data: Buffer) -> tuple[Any, ...]:
        return (self.load_value(data),)

    def _no_batch(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"the {self.name!r} serialiser carries exactly one {self.name} value per frame: it "
            f"cannot carry a batch of calls (send one call per item, chunksize=1)"
        )

    dump_batch = load_batch = dump_results = load_results = _no_batch


def _json() -> Codec:
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()

    return _Objects("json", dumps, json.loads)


def _msgpack() -> Codec:
    import msgpack

    def dumps(value: Any) -> bytes:
        data: bytes = msgpack.packb(value, use_bin_type=True)
        return data

    def loads(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    return _Objects("msgpack", dumps, loads)


def get(name: str) -> Codec:
    """Build the codec called ``name``; ``ImportError`` names a missing optional package,
    ``ValueError`` an unknown name or a bad user serialiser."""
    if name == "pickle":
        return _Pickle()
    if name == "json":
        return _json()
    if name == "bytes":
        return _Raw(bytes)
    if name == "str":
        return _Raw(str)
    if name in ("msgpack", "cloudpickle"):
        try:
            return _msgpack() if name == "msgpack" else _CloudPickle()
        except ImportError:
            raise ImportError(
                f"the {name!r} serialiser needs the {name} package (pip install {name}, or "
                f"anyfork[fast]) in both the parent and the worker"
            ) from None
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown serialiser {name!r}: use one of {', '.join(BUILTIN)} or 'module:attr'"
        )
    import importlib

    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return of(name, obj)


def of(name: str, obj: Any) -> Codec:
    """The codec of the user serialiser ``obj``, known to the worker as ``name``; ``ValueError``
    if it lacks callable ``dumps()`` and ``loads()``."""
    dumps = getattr(obj, "dumps", None)
    loads = getattr(obj, "loads", None)
    if not callable(dumps) or not callable(loads):
        raise ValueError(f"serialiser {name!r} needs callable dumps() and loads()")
    return _Objects(name, dumps, loads)
