"""``make bench``: how fast anyfork creates processes, next to its floors and peers.

Every row creates one process per iteration, reads its first byte, waits for EOF (the child has
exited) and goes on, for ``--budget`` seconds; that is repeated ``--rounds`` times, the rounds
interleaved across rows so that drift of a noisy VM hits every row alike.  A row's rate is the
median of its rounds; its latency (start to first byte) the median of all its iterations.

The "spaced" rows pause ``PAUSE`` seconds before each start, so that nothing of one start
overlaps the next (whatever a template does between starts, forking its next child ahead
included, is done by then): they measure the latency of a single start, anyfork next to Perl's
AnyEvent::Fork in the same run; their rate (mostly the pauses) is not shown.

    python bench/run.py            # the full table (1 s x 5 rounds per row, ~1.5 min)
    python bench/run.py --quick    # smoke run: 1 short round
    python bench/run.py --rows af_new_spaced,perl_new_spaced   # only those rows
    python bench/run.py --big-parent --budget S   # internal: one round from a 1 GiB parent

Results go to stdout and to bench/results/latest.txt (quick runs: quick.txt).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import py_compile
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, sys.path[0] is bench/; the repo root must come first instead so that
# "bench._children" imports by that name here, in anyfork children (which get our sys.path) and
# in multiprocessing's spawn children, and so that bench/ modules never shadow anything.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _loops  # noqa: E402  # needs the sys.path fix above
from bench._loops import Sample  # noqa: E402

PERL_SCRIPT = str(HERE / "perl_fork.pl")
#: The pause before each start of a spaced row.
PAUSE = 0.02
BIG_BYTES = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")
PYC_PREFIX = HERE / "results" / "pycache"
BIG_KEYS = ("af_new_small", "af_new_big", "os_fork_big")

Measure = Callable[[float], dict[str, Sample]]


@dataclass
class Row:
    key: str
    label: str
    #: What the latency column means for this row.
    latency: str = "first byte"
    samples: list[Sample] = field(default_factory=list)
    unavailable: str | None = None
    error: str | None = None
    #: Spaced single starts: only the latency means something.
    spaced: bool = False

    @property
    def rate(self) -> float | None:
        rates = sorted(s.rate for s in self.samples)
        return _loops.median(rates) if rates and self.ok else None

    @property
    def latency_median(self) -> float | None:
        lat = [x for s in self.samples for x in s.latencies]
        return _loops.median(lat) if lat and self.ok else None

    @property
    def ok(self) -> bool:
        return self.unavailable is None and self.error is None and bool(self.samples)


ROWS = [
    Row("af_new", "anyfork.new().run_blocking(hello)"),
    Row("af_new_pre", "anyfork.new().run_blocking(socket.close)", latency="EOF"),
    Row("af_new_eval", "anyfork.new().eval(def hello).run_blocking(hello)"),
    Row("af_fork_req", "tmpl.fork().run_blocking(hello), tmpl required it"),
    Row("af_new_async", "await anyfork.new().run(hello)  [asyncio]"),
    Row("af_fork_np", "tmpl.fork().run_blocking(hello), numpy template"),
    Row("af_exec", "anyfork.new_exec().run_blocking(hello)"),
    Row("af_exec_pyc", "  same, every module byte-compiled (PYCACHEPREFIX)"),
    Row("af_new_small", "anyfork.new(), big-parent subprocess before alloc"),
    Row("af_new_big", "anyfork.new() from a 1 GiB parent (same process)"),
    Row("os_fork", "os.fork() + socketpair  [floor]"),
    Row("os_fork_min", "os.fork() in an empty python -S  [floor]", latency="-"),
    Row("os_fork_tmpl", "os.fork() in a template-sized python -S", latency="-"),
    Row("os_fork_ovl", "  same, each exit overlapping the next fork", latency="-"),
    Row("os_fork_big", "os.fork() from a 1 GiB parent"),
    Row("mp_fork", "multiprocessing fork: start+Pipe+join"),
    Row("mp_forkserver", "multiprocessing forkserver"),
    Row("mp_spawn", "multiprocessing spawn"),
    Row("bare_python", "subprocess.run([python, -S, -c, pass])", latency="-"),
    Row("perl_new", "Perl AnyEvent::Fork->new->run(CORE::exit)", latency="EOF"),
    Row("perl_new_hello", "Perl ->new->eval(sub hello)->run(hello)"),
    Row("perl_new_exec", "Perl AnyEvent::Fork->new_exec->run(exit)", latency="EOF"),
    Row("perl_tmpl", "Perl $tmpl->fork->run(hello), tmpl eval'd it"),
    Row("perl_fork", "Perl socketpair + fork + _exit  [floor]"),
    Row("af_new_spaced", "SPACED anyfork.new().run_blocking(socket.close)", "EOF", spaced=True),
    Row("perl_new_spaced", "SPACED Perl AnyEvent::Fork->new->run(CORE::exit)", "EOF", spaced=True),
    Row("af_fork_spaced", "SPACED tmpl.fork().run_blocking(hello), required", spaced=True),
    Row("perl_tmpl_spaced", "SPACED Perl $tmpl->fork->run(hello), eval'd", spaced=True),
    Row("ahead_spaced", "SPACED floor: child forked ahead, 1 byte in, EOF", "EOF", spaced=True),
    Row("ahead_ack_spaced", "SPACED   same, answer 1 byte, yield, EOF [floor]", "EOF", spaced=True),
]


# -- the 1 GiB parent (a subprocess of the bench) --------------------------------------------


def rss_kib(pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def big_parent(budget: float) -> None:
    """Time anyfork.new() here while small, grow to 1 GiB of touched memory, then time
    anyfork.new() and os.fork() again: the before/after pair shares the process, the template
    and (nearly) the moment, so their ratio is the cleanest view of the size effect."""
    small = _loops.timed(_loops.anyfork_new_once, budget).to_json()
    small_rss = rss_kib()
    buf = bytearray(BIG_BYTES)
    # Write one byte per page so that every page is really mapped (and must be set up for
    # copy-on-write by a fork), whatever the allocator did for the zero-fill.
    buf[::PAGE] = b"\x01" * (BIG_BYTES // PAGE)
    result = {
        "small_rss_kib": small_rss,
        "rss_kib": rss_kib(),
        "af_new_small": small,
        "af_new_big": _loops.timed(_loops.anyfork_new_once, budget).to_json(),
        "os_fork_big": _loops.timed(_loops.os_fork_once, budget).to_json(),
    }
    if buf[PAGE] != 1:  # keep buf alive (and touched) until both loops are done
        raise AssertionError("the 1 GiB buffer changed under us")
    print(json.dumps(result))


def measure_big(budget: float, facts: dict[str, str]) -> dict[str, Sample]:
    out = subprocess.run(
        [sys.executable, __file__, "--big-parent", "--budget", str(budget)],
        capture_output=True,
        text=True,
        timeout=4 * budget + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"--big-parent exited {out.returncode}: {out.stderr.strip()[-400:]}")
    data = json.loads(out.stdout)
    facts["big parent"] = (
        f"a subprocess: RSS {kib(data['small_rss_kib'])} before, {kib(data['rss_kib'])} after "
        "allocating and touching 1 GiB"
    )
    return {key: Sample.from_json(data[key]) for key in BIG_KEYS}


# -- environment -----------------------------------------------------------------------------


def perl_status() -> tuple[str | None, str]:
    """(None, description) if the Perl rows can run, else (reason, "")."""
    if shutil.which("perl") is None:
        return "no perl on PATH", ""
    probe = subprocess.run(
        [
            "perl",
            "-MAnyEvent",
            "-MAnyEvent::Fork",
            "-e",
            'AnyEvent::detect; printf "perl %vd, AnyEvent::Fork %s, loop %s",'
            " $^V, $AnyEvent::Fork::VERSION, $AnyEvent::MODEL",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        return "AnyEvent::Fork not installed (bench/setup.py could not install it)", ""
    return None, probe.stdout.strip()


def new_exec_argv() -> list[str]:
    """The interpreter options anyfork.new_exec really uses, read from a live child's cmdline."""
    import anyfork

    # Read it while the child certainly runs: right after posix_spawn returns, /proc can still
    # show an empty cmdline (the kernel sets the new argv up after releasing the vfork parent).
    proc = anyfork.new_exec()
    pid = proc.pid
    sock = proc.run_blocking("bench._children:hold", timeout=_loops.TIMEOUT)
    try:
        if sock.recv(1) != b"x":
            raise RuntimeError("the new_exec child did not start")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    finally:
        sock.close()
    return argv[: argv.index("-c")] if "-c" in argv else argv[:3]


def byte_compile_bench() -> None:
    """Give bench/'s own modules a bytecode cache even under PYTHONDONTWRITEBYTECODE=1: every
    anyfork child imports bench._children, and compiling it from source each time would be
    charged to anyfork.  (py_compile writes whatever the flag says; __pycache__ is ignored.)"""
    for src in sorted(HERE.glob("*.py")):
        cfile = Path(importlib.util.cache_from_source(str(src)))
        if not cfile.exists() or cfile.stat().st_mtime < src.stat().st_mtime:
            py_compile.compile(str(src), cfile=str(cfile), doraise=True)


def build_pyc_prefix() -> int:
    """Byte-compile every module loaded here (a superset of what an exec'd anyfork child
    imports) into PYC_PREFIX, for the new_exec row that runs with PYTHONPYCACHEPREFIX set.

    Outside bench/ we write nothing, so anyfork's own modules have no bytecode cache when
    PYTHONDONTWRITEBYTECODE is set; this row shows what that costs an exec'd interpreter.
    A prefix applies to the stdlib too, hence all of sys.modules, not just anyfork."""
    import fcntl  # noqa: F401
    import select  # noqa: F401
    import traceback  # noqa: F401

    import anyfork._child._serve  # noqa: F401  # and what the child imports on its way to run()

    saved = sys.pycache_prefix
    sys.pycache_prefix = str(PYC_PREFIX)
    written = 0
    try:
        for module in list(sys.modules.values()):
            src = getattr(module, "__file__", None)
            if not isinstance(src, str) or not src.endswith(".py") or not os.path.exists(src):
                continue
            cfile = importlib.util.cache_from_source(src)
            if os.path.exists(cfile) and os.stat(cfile).st_mtime >= os.stat(src).st_mtime:
                continue
            try:
                py_compile.compile(src, cfile=cfile, doraise=True)
                written += 1
            except (py_compile.PyCompileError, OSError):
                pass  # that one module compiles from source in the child; slower, not wrong
    finally:
        sys.pycache_prefix = saved
    return written


def with_pyc_prefix(measure: Measure) -> Measure:
    def run(budget: float) -> dict[str, Sample]:
        saved = os.environ.get("PYTHONPYCACHEPREFIX")
        # new_exec hands os.environ as it is at the call to posix_spawn, so this reaches
        # exactly the children of this row.
        os.environ["PYTHONPYCACHEPREFIX"] = str(PYC_PREFIX)
        try:
            return measure(budget)
        finally:
            if saved is None:
                del os.environ["PYTHONPYCACHEPREFIX"]
            else:
                os.environ["PYTHONPYCACHEPREFIX"] = saved

    return run


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def header(facts: dict[str, str], args: argparse.Namespace) -> list[str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    thp = "?"
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        pass
    lines = [
        "anyfork process-creation benchmark" + ("  (QUICK smoke run)" if args.quick else ""),
        f"date         {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"machine      {os.cpu_count()} CPUs, {cpu}; Linux {platform.release()}; THP {thp}",
        f"python       {sys.version.split()[0]} ({sys.executable})",
        f"sys.version  {sys.version}",
        f"sys.flags    {sys.flags}",
        f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}, "
        f"sys.dont_write_bytecode={sys.dont_write_bytecode}",
    ]
    lines += [f"{k:<12} {v}" for k, v in facts.items()]
    lines.append(
        f"method       {args.rounds} round(s) x {args.budget:g} s per row, interleaved; "
        "rate = median of rounds; latency = median of all iterations"
    )
    return lines


# -- the table -------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def table(rows: list[Row]) -> list[str]:
    out = [
        f"{'method':<50} {'rate/s':>8} {'(min-max)':>13} {'ms/proc':>8} {'latency ms':>11} "
        f"{'n':>6}",
        "-" * 101,
    ]
    for row in rows:
        if not row.ok:
            why = row.unavailable or row.error or "no samples"
            state = "not available" if row.unavailable else "ERROR"
            out.append(f"{row.label:<50} {state}: {why}"[:200])
            continue
        if row.spaced:
            latency = fmt_ms(row.latency_median) + (" EOF" if row.latency == "EOF" else "")
            n = sum(s.count for s in row.samples)
            out.append(f"{row.label:<50} {'-':>8} {'':>13} {'-':>8} {latency:>11} {n:>6}")
            continue
        rates = [s.rate for s in row.samples]
        rate = row.rate or 0.0
        lat: list[float] = [x for s in row.samples for x in s.latencies]
        latency = fmt_ms(_loops.median(lat)) if row.latency != "-" else "-"
        if row.latency == "EOF" and latency != "-":
            latency += " EOF"
        span = f"({min(rates):.0f}-{max(rates):.0f})"
        n = sum(s.count for s in row.samples)
        out.append(
            f"{row.label:<50} {rate:>8.1f} {span:>13} {1e3 / rate:>8.2f} {latency:>11} {n:>6}"
        )
    out.append(
        "latency: start of creation to the child's first byte, median; 'EOF' rows send no "
        "byte (time to EOF); Perl latencies are the median of per-run medians.  SPACED rows: "
        f"a {PAUSE * 1e3:g} ms pause before each start; latency only."
    )
    return out


def ratios(by: dict[str, Row]) -> list[str]:
    def r(a: str, b: str) -> float | None:
        ra, rb = by[a].rate, by[b].rate
        return ra / rb if ra and rb else None

    def missing(*keys: str) -> str:
        gone = [by[k].label for k in keys if not by[k].ok]
        return "n/a: not measured: " + "; ".join(gone)

    lines: list[str] = ["ratios (of rates; > 1 means the first is faster)"]

    def info(text: str, a: str, b: str) -> None:
        value = r(a, b)
        shown = f"{value:.2f}x" if value is not None else missing(a, b)
        lines.append(f"  {text:<68} {shown}")

    def target(text: str, value: float | None, ok: bool, goal: str, keys: tuple[str, ...]) -> None:
        if value is None:
            lines.append(f"  {text:<68} {missing(*keys)}  [target {goal}: NOT MEASURED]")
        else:
            verdict = "PASS" if ok else "MISS"
            lines.append(f"  {text:<68} {value:.3f}x  [target {goal}: {verdict}]")

    def lat(a: str, b: str) -> float | None:
        la, lb = by[a].latency_median, by[b].latency_median
        return la / lb if la and lb else None

    def info_lat(text: str, a: str, b: str) -> None:
        value = lat(a, b)
        shown = f"{value:.3f}x" if value is not None else missing(a, b)
        lines.append(f"  {text:<68} {shown}  (latency; lower is better)")

    # Single starts (spaced): latency to the first byte (EOF) of a function the template has
    # loaded, as a fraction of Perl's for the same work; < 1 means anyfork is faster.
    v = lat("af_new_spaced", "perl_new_spaced")
    target("spaced single start latency: anyfork.new / Perl ->new (EOF; lower is better)", v,
           v is not None and v <= 0.5, "<= 0.5x", ("af_new_spaced", "perl_new_spaced"))  # fmt: skip
    info_lat("  the floor (a forked child, one byte each way) vs Perl ->new", "ahead_spaced",
             "perl_new_spaced")  # fmt: skip
    info_lat("  the floor with an answer first (anyfork's RUNNING) vs Perl ->new",
             "ahead_ack_spaced", "perl_new_spaced")  # fmt: skip
    info_lat("  anyfork.new vs that floor", "af_new_spaced", "ahead_ack_spaced")
    v = lat("af_fork_spaced", "perl_tmpl_spaced")
    keys = ("af_fork_spaced", "perl_tmpl_spaced")
    target("spaced single start latency: tmpl.fork / Perl $tmpl->fork (first byte)", v,
           v is not None and v <= 0.5, "<= 0.5x", keys)  # fmt: skip
    # Like for like: a function the template has loaded (CORE::exit / socket.close), and a
    # function compiled in the child from a string (Perl's eval row).
    v = r("af_new_pre", "perl_new")
    target("anyfork.new(socket.close) vs Perl AnyEvent::Fork->new(CORE::exit)", v,
           v is not None and v >= 1.0, ">= 1x", ("af_new_pre", "perl_new"))  # fmt: skip
    info("anyfork.new eval+run vs Perl ->new->eval->run(hello)", "af_new_eval", "perl_new_hello")
    info("anyfork.new(hello: module imported in each child) vs Perl new", "af_new", "perl_new")
    info("CPython's own fork floor, template-sized, vs Perl new", "os_fork_tmpl", "perl_new")
    info("CPython's own fork floor, empty interpreter, vs Perl new", "os_fork_min", "perl_new")
    info("  template-sized, exits overlapped (a template's ceiling), vs Perl", "os_fork_ovl",
         "perl_new")  # fmt: skip
    info("template that required the module vs anyfork.new(hello)", "af_fork_req", "af_new")
    info("tmpl.fork() (required) vs Perl $tmpl->fork (eval'd)", "af_fork_req", "perl_tmpl")
    v = r("af_new", "mp_forkserver")
    target("anyfork.new vs mp forkserver", v, v is not None and v >= 5.0, ">= 5x",
           ("af_new", "mp_forkserver"))  # fmt: skip
    # Paired: per round, the same subprocess before and after growing; median of the ratios.
    pairs = zip(by["af_new_big"].samples, by["af_new_small"].samples, strict=True)
    per_round = [big.rate / small.rate for big, small in pairs if small.rate]
    v = _loops.median(per_round) if by["af_new_big"].ok and by["af_new_small"].ok else None
    target("anyfork.new from 1 GiB parent vs same process before alloc", v,
           v is not None and v >= 0.90, ">= 0.90x, i.e. within 10%",
           ("af_new_big", "af_new_small"))  # fmt: skip
    if per_round:
        lines.append("    per round: " + ", ".join(f"{x:.2f}" for x in per_round))
    info("anyfork.new from 1 GiB parent vs the bench parent's row (unpaired)", "af_new_big",
         "af_new")  # fmt: skip
    # Time per process, so the ratio reads "new_exec takes N times as long as bare startup".
    v = r("bare_python", "af_exec")
    target("new_exec time / bare `python -S -c pass` time", v, v is not None and v <= 1.5,
           "<= 1.5x", ("bare_python", "af_exec"))  # fmt: skip
    v = r("bare_python", "af_exec_pyc")
    target("  same, with a bytecode cache for every module", v, v is not None and v <= 1.5,
           "<= 1.5x (diagnostic)", ("bare_python", "af_exec_pyc"))  # fmt: skip
    info("os.fork from 1 GiB parent vs normal parent (contrast)", "os_fork_big", "os_fork")
    info("anyfork.new vs os.fork, both from a 1 GiB parent", "af_new_big", "os_fork_big")
    info("anyfork.new vs os.fork from the (small) bench parent", "af_new", "os_fork")
    info("asyncio run() vs run_blocking()", "af_new_async", "af_new")
    info("numpy template fork vs anyfork.new", "af_fork_np", "af_new")
    info("anyfork.new_exec vs Perl new_exec", "af_exec", "perl_new_exec")
    info("anyfork.new vs mp fork", "af_new", "mp_fork")
    info("anyfork.new vs mp spawn", "af_new", "mp_spawn")
    return lines


# -- orchestration ---------------------------------------------------------------------------


def build_jobs(
    by: dict[str, Row], facts: dict[str, str], closers: list[Callable[[], None]]
) -> list[tuple[tuple[str, ...], Measure]]:
    """The measurements of one round, in order; marks rows that cannot run."""
    import multiprocessing

    import anyfork

    def one(key: str, once: Callable[[], float | None]) -> tuple[tuple[str, ...], Measure]:
        return (key,), lambda budget: {key: _loops.timed(once, budget)}

    # The recommended pattern: a template that has imported the workers' module.
    req = anyfork.new().require("bench._children")
    closers.append(req.close)
    req.wait_started_blocking(timeout=60)

    def spaced(key: str, once: Callable[[], float]) -> tuple[tuple[str, ...], Measure]:
        return (key,), lambda budget: {key: _loops.spaced(once, budget, PAUSE)}

    jobs = [
        one("af_new", _loops.anyfork_new_once),
        one("af_new_pre", _loops.anyfork_new_preloaded_once),
        one("af_new_eval", _loops.anyfork_new_eval_once),
        one("af_fork_req", _loops.anyfork_fork_once(req)),
        (("af_new_async",), lambda budget: {"af_new_async": _loops.anyfork_new_async(budget)}),
        spaced("af_new_spaced", _loops.anyfork_new_preloaded_once),
        spaced("af_fork_spaced", _loops.anyfork_fork_once(req)),
    ]
    for key, acks in (("ahead_spaced", 0), ("ahead_ack_spaced", 1)):
        ahead = _loops.ForkedAhead(acks)
        closers.append(ahead.close)
        jobs.append(spaced(key, ahead.once))
    if importlib.util.find_spec("numpy") is None:
        by["af_fork_np"].unavailable = "numpy not installed (run bench/setup.py)"
    else:
        # numpy is imported in the template only; the bench parent stays small.
        tmpl = anyfork.new().require("numpy")
        closers.append(tmpl.close)
        pid = tmpl.wait_started_blocking(timeout=60)
        jobs.append(one("af_fork_np", _loops.anyfork_fork_once(tmpl)))
        # Sizes after the first fork (the template preloads what children need then).
        _loops.timed(_loops.anyfork_fork_once(tmpl), 0.0, 1)
        facts["numpy"] = importlib.metadata.version("numpy")
        facts["templates"] = (
            f"default template RSS {kib(rss_kib(ppid_of(pid)))}, numpy template RSS "
            f"{kib(rss_kib(pid))}, bench parent RSS {kib(rss_kib())}"
        )
    jobs += [
        one("af_exec", _loops.anyfork_exec_once),
        (("af_exec_pyc",), with_pyc_prefix(one("af_exec_pyc", _loops.anyfork_exec_once)[1])),
        (BIG_KEYS, lambda budget: measure_big(budget, facts)),
        one("os_fork", _loops.os_fork_once),
        (("os_fork_min",), lambda budget: {"os_fork_min": _loops.min_fork_run(budget, "empty")}),
        (("os_fork_tmpl",), lambda b: {"os_fork_tmpl": _loops.min_fork_run(b, "template")}),
        (("os_fork_ovl",), lambda b: {"os_fork_ovl": _loops.min_fork_run(b, "overlap")}),
    ]
    for method in ("fork", "forkserver", "spawn"):
        ctx = multiprocessing.get_context(method)
        jobs.append(one(f"mp_{method}", _loops.mp_once(ctx)))
    jobs.append(one("bare_python", _loops.bare_python_once))

    reason, desc = perl_status()
    perl_keys = (
        *("perl_new", "perl_new_hello", "perl_new_exec", "perl_tmpl", "perl_fork"),
        *("perl_new_spaced", "perl_tmpl_spaced"),
    )
    if reason is not None:
        for key in perl_keys:
            by[key].unavailable = reason
    else:
        facts["perl"] = desc
        jobs += [((key,), perl_job(key)) for key in perl_keys]
    return jobs


def perl_job(key: str) -> Measure:
    mode = key.removeprefix("perl_").removesuffix("_spaced")
    pause = PAUSE if key.endswith("_spaced") else 0.0

    def run(budget: float) -> dict[str, Sample]:
        return {key: _loops.perl_run(PERL_SCRIPT, mode, budget, pause)}

    return run


def kib(value: int | None) -> str:
    return "?" if value is None else f"{value / 1024:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 0.2 s per row")
    ap.add_argument("--budget", type=float, help="seconds per row per round (default 1.0)")
    ap.add_argument("--rounds", type=int, help="rounds (default 5)")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/latest.txt)")
    ap.add_argument("--rows", help="comma-separated row keys: measure only those")
    ap.add_argument("--big-parent", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 0.2 if args.quick else 1.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.big_parent:
        big_parent(args.budget)
        return
    default = "rows.txt" if args.rows else "quick.txt" if args.quick else "latest.txt"
    out_path = args.out or HERE / "results" / default

    started = time.monotonic()
    byte_compile_bench()
    import anyfork
    import anyfork._core._spawn

    compiled = build_pyc_prefix()

    facts: dict[str, str] = {
        "anyfork": f"{anyfork.__version__} from {Path(anyfork.__file__).parent}",
        "new_exec":
            "runs " + " ".join(Path(a).name if i == 0 else a for i, a in enumerate(new_exec_argv()))
            + " -c <boot> (options read from the child's /proc cmdline)",
        "bytecode": f"bench/*.py byte-compiled; {PYC_PREFIX.relative_to(ROOT)} for the "
            f"PYTHONPYCACHEPREFIX row ({compiled} modules compiled this run); anyfork's own "
            + ("__pycache__ present" if (Path(anyfork.__file__).parent / "__pycache__").is_dir()
               else "modules have NO __pycache__")
            + ("; exec'd children receive anyfork's child side as code objects from the parent"
               if anyfork._core._spawn.child_code() is not None
               else "; exec'd children import anyfork's child side themselves"),
    }  # fmt: skip
    rows = [Row(r.key, r.label, r.latency, spaced=r.spaced) for r in ROWS]
    by = {row.key: row for row in rows}
    closers: list[Callable[[], None]] = []
    try:
        jobs = build_jobs(by, facts, closers)
        if args.rows:
            wanted = set(args.rows.split(","))
            jobs = [job for job in jobs if wanted & set(job[0])]
            rows = [row for row in rows if row.key in wanted]
        for rnd in range(args.rounds):
            for keys, measure in jobs:
                if any(by[k].error for k in keys):
                    continue  # it failed in an earlier round; the error is in the table
                label = ", ".join(keys)
                print(f"[round {rnd + 1}/{args.rounds}] {label} ...", file=sys.stderr, flush=True)
                try:
                    for key, sample in measure(args.budget).items():
                        by[key].samples.append(sample)
                except Exception as exc:
                    for key in keys:
                        by[key].error = f"{type(exc).__name__}: {exc}"
    finally:
        for close in closers:
            close()

    lines = header(facts, args)
    lines += ["", *table(rows), "", *ratios(by)]
    if args.quick:
        lines.append("QUICK run: one 0.2 s round per row; the verdicts above are only a smoke test")
    lines.append(f"\ntotal bench time {time.monotonic() - started:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    print(f"(written to {out_path})")


if __name__ == "__main__":
    main()
