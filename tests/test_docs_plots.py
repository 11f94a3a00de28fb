"""bench/plots.py reads the bench scripts' text results: its parsers against samples of each
format (the charts themselves need matplotlib, a bench-only dependency)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # (python -m pytest has it already; plain pytest may not)
    sys.path.insert(0, ROOT)

from bench import plots  # noqa: E402

RUN = """\
anyfork process-creation benchmark
date         2026-11-30 02:57:33
machine      2 CPUs, AMD EPYC; Linux 6.18
python       3.11.7 (/work/main/.venv/bin/python)

method                                               rate/s     (min-max)  ms/proc  latency ms      n
-----------------------------------------------------------------------------------------------------
anyfork.new().run_blocking(hello)                     282.3     (232-291)     3.54        2.76   1346
anyfork.new().run_blocking(socket.close)              577.7     (499-660)     1.73    1.32 EOF   2894
tmpl.fork().run_blocking(hello), numpy template    not available: numpy not installed (run bench/setup.py)
os.fork() in an empty python -S  [floor]             1062.8    (930-1107)     0.94           -   5213
Perl AnyEvent::Fork->new->run(CORE::exit)             912.5    (903-1072)     1.10    0.98 EOF   4787
SPACED anyfork.new().run_blocking(socket.close)           -                      -    1.55 EOF    231
"""

POOL = """\
anyfork pool benchmark  (2 CPUs, Python 3.11.7)
rounds 3; start-up: median ms until N workers each completed one call

start-up                                        N=2        N=8       N=32
-------------------------------------------------------------------------
os.fork x N + pipe  [floor]                    50.6      135.9      444.4
anyfork.Pool, warm template                    75.6      222.3      583.4
loky.ProcessPoolExecutor                        n/a        n/a        n/a

throughput (2 workers)                        map/s   submit/s  latency ms
"""

RPC = """\
anyfork RPC benchmark
  python 3.11.7 (/work/wt/docs/.venv/bin/python)
  cpus: 2, load average at start: (13.24072265625, 14.3, 12.4)

Round trip of a trivial call, unpinned (what the scheduler gives; x: as above)
                                                             best        median   vs floor
  raw socketpair pickle ping-pong, blocking                 27.4 us      38.1 us   1.00x
  anyfork BlockingClient (sync backend)                    120.4 us     190.5 us   6.06x
  Perl AnyEvent::Fork::RPC                             not available (not packaged)

Pipelined throughput, one call per item, 2 workers (x: median per-round time ratio to Client.map)
                                                             best        median   vs map
  anyfork Client.map, 2 clients, chunksize=1              28,420 /s    17,792 /s   1.00x
  loky(2).map                                              3,679 /s     2,155 /s   9.78x
"""

JOBLIB = """\
joblib backends, 8 workers
date         2026-11-30 03:47:44
machine      2 CPUs, x86_64; Linux 6.18.44-fc-v782
python       3.11.7, joblib 1.6.0

backend       first call ms     tasks/s  Parallel calls/s
---------------------------------------------------------
anyfork              1210.1      100825              85.5
loky                 6444.1       37066              70.3
"""


def test_run_table() -> None:
    rates, latencies, source = plots.parse_run(RUN)
    assert [(b.label, b.value, b.family) for b in rates] == [
        ("anyfork.new().run_blocking(hello)", 282.3, "anyfork"),
        ("anyfork.new().run_blocking(socket.close)", 577.7, "anyfork"),
        ("os.fork() in an empty python -S  [floor]", 1062.8, "floor"),
        ("Perl AnyEvent::Fork->new->run(CORE::exit)", 912.5, "perl"),
    ]
    assert [b.value for b in latencies] == [2.76, 1.32, 0.98]  # the floor row has none
    assert source == "2 CPUs, AMD EPYC; Linux 6.18; Python 3.11.7; 2026-11-30 02:57:33"


def test_pool_table() -> None:
    sizes, rows, source = plots.parse_pool(POOL)
    assert sizes == [2, 8, 32]
    assert rows == {
        "os.fork x N + pipe  [floor]": [50.6, 135.9, 444.4],
        "anyfork.Pool, warm template": [75.6, 222.3, 583.4],
        "loky.ProcessPoolExecutor": [None, None, None],
    }
    assert source == "2 CPUs, Python 3.11.7"


def test_rpc_sections_take_the_median_column() -> None:
    latency, rate, source = plots.parse_rpc(RPC)
    assert [(b.label, b.value) for b in latency] == [
        ("raw socketpair pickle ping-pong, blocking", 38.1),
        ("anyfork BlockingClient (sync backend)", 190.5),
    ]
    assert [(b.label, b.value, b.family) for b in rate] == [
        ("anyfork Client.map, 2 clients, chunksize=1", 17792.0, "anyfork"),
        ("loky(2).map", 2155.0, "peer"),
    ]
    assert source == "2 CPUs, Python 3.11.7, load average 13.2 at the start"


def test_joblib_table() -> None:
    rows, source = plots.parse_table(JOBLIB, "backend")
    assert rows == [["anyfork", "1210.1", "100825", "85.5"], ["loky", "6444.1", "37066", "70.3"]]
    assert source.endswith("Python 3.11.7, joblib 1.6.0; 2026-11-30 03:47:44")


def test_unreadable_results_say_so() -> None:
    with pytest.raises(plots.Unreadable, match=r"run\.py"):
        plots.parse_run("nothing here")
    with pytest.raises(plots.Unreadable, match="start-up"):
        plots.parse_pool("anyfork pool benchmark")
    with pytest.raises(plots.Unreadable, match="Round trip"):
        plots.parse_rpc("anyfork RPC benchmark")
    with pytest.raises(plots.Unreadable, match="backend"):
        plots.parse_table("joblib", "backend")
