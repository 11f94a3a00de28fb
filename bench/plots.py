"""SVG charts of the benchmarks' results, for the documentation (``make bench`` runs this last).

    .venv/bin/python bench/plots.py [--results DIR] [--out DIR]

Reads the text results the bench scripts leave in bench/results/ (``latest.txt`` of run.py,
``rpc.txt`` and ``pool.txt``: the output of rpc.py and pool.py, ``memory.txt``, ``joblib.txt``)
and writes one small SVG per chart into docs/plots/, each with the machine and date its
figures came from.  A results file that is missing (a bench not run) skips its chart with a
note; a file that is there but cannot be read is an error.  Needs matplotlib (the ``bench``
extra).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

COLOURS = {
    "anyfork": "#2a7ab0",
    "floor": "#888888",
    "perl": "#c9752b",
    "peer": "#b7b7d9",
}


#: Line colours of the peers in a line chart (none of them anyfork's blue).
PEER_LINES = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]


class Unreadable(Exception):
    """A results file whose tables this script does not recognise."""


@dataclass
class Bar:
    label: str
    value: float
    family: str


def family(label: str) -> str:
    low = label.lower()
    if "floor" in low or low.startswith(("os.fork", "raw ")):
        return "floor"
    if "perl" in low:
        return "perl"
    if "anyfork" in low or low.startswith(("tmpl.", "await anyfork", "  same")):
        return "anyfork"
    return "peer"


def header(text: str, key: str) -> str:
    m = re.search(rf"^{key}\s+(.+)$", text, re.M)
    return m[1].strip() if m else "?"


# -- parsers -------------------------------------------------------------------------------------

_RUN_ROW = re.compile(
    r"^(?P<label>\S.*?)\s{2,}(?P<rate>[\d.]+)\s+\((?P<lo>[\d.]+)-(?P<hi>[\d.]+)\)\s+"
    r"(?P<ms>[\d.]+)\s+(?P<lat>[\d.]+|-)(?: EOF)?\s+(?P<n>\d+)$"
)


def parse_run(text: str) -> tuple[list[Bar], list[Bar], str]:
    """run.py's table: (rates, latencies, source line)."""
    rates, latencies = [], []
    for line in text.splitlines():
        m = _RUN_ROW.match(line)
        if not m:
            continue
        label = m["label"].strip()
        rates.append(Bar(label, float(m["rate"]), family(label)))
        if m["lat"] != "-":
            latencies.append(Bar(label, float(m["lat"]), family(label)))
    if not rates:
        raise Unreadable("no rows of run.py's table")
    source = f"{header(text, 'machine')}; Python {header(text, 'python').split()[0]}; "
    source += header(text, "date")
    return rates, latencies, source


def parse_pool(text: str) -> tuple[list[int], dict[str, list[float | None]], str]:
    """pool.py's start-up table: (sizes, {row: ms per size}, source line)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("start-up"))
    except StopIteration:
        raise Unreadable("no start-up table in pool.py's output") from None
    sizes = [int(n) for n in re.findall(r"N=(\d+)", lines[start])]
    rows: dict[str, list[float | None]] = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        label, cells = line[:40].strip(), line[40:].split()
        values: list[float | None] = []
        for cell in cells[: len(sizes)]:
            try:
                values.append(float(cell))
            except ValueError:
                values.append(None)  # n/a
        rows[label] = values
    if not sizes or not rows:
        raise Unreadable("an empty start-up table")
    m = re.search(r"\((\d+) CPUs, Python ([\d.]+)\)", text)
    source = f"{m[1]} CPUs, Python {m[2]}" if m else "?"
    return sizes, rows, source


def parse_rpc(text: str) -> tuple[list[Bar], list[Bar], str]:
    """rpc.py's sections: (round-trip latencies in us, unpinned; calls/s), source; the
    median column of each."""

    def section(title: str) -> list[tuple[str, float]]:
        lines = text.splitlines()
        try:
            start = next(i for i, line in enumerate(lines) if line.startswith(title))
        except StopIteration:
            raise Unreadable(f"no section {title!r} in rpc.py's output") from None
        rows = []
        for line in lines[start + 2 :]:
            if not line.startswith("  ") or not line.strip():
                break
            label, rest = line[2:54].strip(), line[54:]
            numbers = re.findall(r"\d[\d,]*(?:\.\d+)?", rest)
            if len(numbers) >= 2 and "not" not in rest[:20]:
                rows.append((label, float(numbers[1].replace(",", ""))))  # the median
        return rows

    latency = [
        Bar(lb, v, family(lb)) for lb, v in section("Round trip of a trivial call, unpinned")
    ]
    rate = [Bar(lb, v, family(lb)) for lb, v in section("Pipelined throughput")]
    m = re.search(r"cpus: (\d+)", text)
    py = re.search(r"python ([\d.]+)", text)
    load = re.search(r"load average at start: \(([\d.]+)", text)
    source = f"{m[1] if m else '?'} CPUs, Python {py[1] if py else '?'}"
    source += f", load average {float(load[1]):.1f} at the start" if load else ""
    return latency, rate, source


def parse_table(text: str, first: str) -> tuple[list[list[str]], str]:
    """A table whose header line starts with ``first`` (memory.txt, joblib.txt): its rows as
    cells, and the source line."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    except StopIteration:
        raise Unreadable(f"no table starting {first!r}") from None
    rows = [line.split() for line in lines[start + 2 :] if line.strip()]
    source = f"{header(text, 'machine')}; Python {header(text, 'python')}; {header(text, 'date')}"
    return rows, source


# -- charts --------------------------------------------------------------------------------------


def _figure(plt: Any, height: float) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(8, height))
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _bars(plt: Any, bars: list[Bar], title: str, xlabel: str, source: str, path: Path) -> None:
    fig, ax = _figure(plt, 0.8 + 0.28 * len(bars))
    labels = [b.label for b in bars][::-1]
    values = [b.value for b in bars][::-1]
    colours = [COLOURS[b.family] for b in bars][::-1]
    ax.barh(labels, values, color=colours)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left", fontsize=11)
    ax.tick_params(axis="y", labelsize=8)
    _footer(fig, source)
    _save(fig, path)


#: When the results file being drawn was written: the date of a chart whose results do not
#: say it themselves (rpc.py's and pool.py's output).
_written = ""


def _footer(fig: Any, source: str) -> None:
    if not re.search(r"\d{4}-\d\d-\d\d", source):
        source = f"{source}; results written {_written}"
    fig.text(0.01, 0.005, source, fontsize=7, color="#555555", ha="left", va="bottom")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, format="svg", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"bench/plots.py: wrote {path}")


def chart_processes(plt: Any, text: str, out: Path) -> None:
    rates, latencies, source = parse_run(text)
    _bars(plt, rates, "Process creation: processes per second (higher is better)",
          "processes/s (log scale)", source, out / "processes-rate.svg")  # fmt: skip
    _bars(plt, latencies, "Process creation: start to first byte (lower is better)",
          "latency ms, median (log scale)", source, out / "processes-latency.svg")  # fmt: skip


def chart_rpc(plt: Any, text: str, out: Path) -> None:
    latency, rate, source = parse_rpc(text)
    _bars(plt, latency, "RPC: round trip of a trivial call, unpinned (lower is better)",
          "microseconds (log scale)", source, out / "rpc-latency.svg")  # fmt: skip
    _bars(plt, rate, "RPC: calls per second over 2 workers (higher is better)",
          "calls/s (log scale)", source, out / "rpc-throughput.svg")  # fmt: skip


def chart_pool(plt: Any, text: str, out: Path) -> None:
    sizes, rows, source = parse_pool(text)
    fig, ax = _figure(plt, 4.2)
    others = iter(PEER_LINES * 2)
    for label, values in rows.items():
        points = [(n, v) for n, v in zip(sizes, values, strict=False) if v is not None]
        if not points:
            continue
        fam = family(label)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=label, lw=2.5 if fam == "anyfork" else 1.2,
                color=COLOURS[fam] if fam != "peer" else next(others))  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("workers N")
    ax.set_ylabel("ms until N workers answered a call")
    ax.set_title("Pool start-up against the number of workers (lower is better)", loc="left",
                 fontsize=11)  # fmt: skip
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    _footer(fig, source)
    _save(fig, out / "pool-startup.svg")


def chart_memory(plt: Any, text: str, out: Path) -> None:
    rows, source = parse_table(text, "ballast")
    ballast = [float(r[0]) for r in rows]
    fig, ax = _figure(plt, 3.6)
    for col, label, fam in ((2, "worker RSS (shared pages included)", "peer"),
                            (3, "worker PSS (its share)", "floor"),
                            (4, "worker USS (its own: what it costs)", "anyfork")):  # fmt: skip
        ax.plot(ballast, [float(r[col]) for r in rows], marker="o", label=label,
                color=COLOURS[fam])  # fmt: skip
    ax.set_xlabel("data in the template, MiB")
    ax.set_ylabel("MiB per worker")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_title("Per-worker memory against the template's size (4 workers)", loc="left",
                 fontsize=11)  # fmt: skip
    ax.legend(fontsize=8, frameon=False)
    _footer(fig, source)
    _save(fig, out / "memory.svg")


def chart_joblib(plt: Any, text: str, out: Path) -> None:
    rows, source = parse_table(text, "backend")
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.4))
    names = [r[0] for r in rows]
    colours = [COLOURS["anyfork"] if n == "anyfork" else COLOURS["peer"] for n in names]
    left.barh(names, [float(r[1]) for r in rows], color=colours)
    left.set_title("first Parallel call, 8 workers: ms (lower is better)", fontsize=9)
    right.barh(names, [float(r[2]) for r in rows], color=colours)
    right.set_title("steady state: tasks/s (higher is better)", fontsize=9)
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
    _footer(fig, source)
    _save(fig, out / "joblib.svg")


CHARTS: dict[str, Callable[[Any, str, Path], None]] = {
    "latest.txt": chart_processes,
    "rpc.txt": chart_rpc,
    "pool.txt": chart_pool,
    "memory.txt": chart_memory,
    "joblib.txt": chart_joblib,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "plots")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("svg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: small files
    matplotlib.rcParams["svg.hashsalt"] = "anyfork"  # stable ids: reproducible files
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    for name, chart in CHARTS.items():
        path = args.results / name
        if not path.exists():
            print(f"bench/plots.py: no {path}: its chart is not drawn (run its bench)")
            continue
        global _written
        _written = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        chart(plt, path.read_text(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
