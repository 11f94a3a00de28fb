"""Install the RPC benchmark's Python peers (loky, pebble); safe to run any number of times.

``bench/rpc.py`` runs this first.  Nothing here may fail the benchmark: a peer that cannot be
installed is reported by ``rpc.py`` as "not installed", so a failure prints a note and carries on.
Perl's AnyEvent::Fork::RPC is not packaged in Debian and the network is limited to PyPI and
Debian, so it is not built from source here; ``rpc.py`` reports it as not available.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

PEERS = ("loky", "pebble")


def note(msg: str) -> None:
    print(f"bench/rpc_setup.py: {msg}", flush=True)


def main() -> int:
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if not missing:
        return 0
    note(f"installing {', '.join(missing)} into {sys.prefix}")
    try:
        rc = subprocess.call([sys.executable, "-m", "pip", "install", "-q", *missing], timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        note(f"pip failed ({exc}); those rows will say 'not installed'")
        return 0
    if rc != 0:
        note(f"pip install exited {rc}; the missing peers' rows will say 'not installed'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
