"""A pool worker's own start-up step, its ``rpc(init=...)`` when it has one (``_worker.Starter``).
Child side: cheap imports only (``multiprocessing.process`` only when there is a key to set)."""

from __future__ import annotations


def setup(*args: object) -> None:
    """Set the parent's ``multiprocessing`` authkey (so that the proxies of its
    ``multiprocessing.Manager()`` work here), run the user's ``init``, then a
    ``PoolExecutor``'s ``initializer(*initargs)``.  The last argument is the pool's pickled
    ``(authkey, setup)``, ``setup`` its pickled ``(init, initializer, initargs)``; the other
    arguments (the template's) go to ``init``."""
    import pickle

    payload = args[-1]
    assert isinstance(payload, bytes)
    key, setup = pickle.loads(payload)
    init, initializer, initargs = pickle.loads(setup)
    if key is not None:
        from multiprocessing import process

        process.current_process().authkey = key
    if init:
        from .._child._serve import resolve

        resolve(init)(*args[:-1])
    if initializer is not None:
        initializer(*initargs)
