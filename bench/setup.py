"""Install what the benchmark's peers need; safe to run any number of times.

* numpy and loky go into the running interpreter's environment (the venv when run by
  ``make bench``): the template row forks from a template that has imported numpy, and loky is
  a peer of the pool benchmark (bench/pool.py).
* Debian's ``libanyevent-fork-perl`` (plus ``libev-perl``, the event loop the reference figures
  were measured with) is installed when ``perl -MAnyEvent::Fork`` fails and we are root.

Nothing here may fail the bench: a peer that cannot be installed is reported as "not available"
by run.py, so every failure below prints a note and carries on.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

# EV is optional for AnyEvent::Fork (it falls back to AnyEvent's pure-Perl loop) but the
# reference anchors used it, so we want it when the archive has it.
PERL_PACKAGES = ["libanyevent-fork-perl", "libev-perl"]


def note(msg: str) -> None:
    print(f"bench/setup.py: {msg}", flush=True)


def ensure_module(name: str, why: str) -> None:
    """pip install ``name`` unless it can be imported (``why``: what lacks it otherwise)."""
    if importlib.util.find_spec(name) is not None:
        return
    note(f"installing {name} into {sys.prefix}")
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "-q", name])
    if rc != 0:
        note(f"pip install {name} failed (exit {rc}); {why}")


def perl_has_anyevent_fork() -> bool:
    if shutil.which("perl") is None:
        return False
    probe = subprocess.run(
        ["perl", "-MAnyEvent::Fork", "-e1"], capture_output=True, check=False, timeout=30
    )
    return probe.returncode == 0


def apt_install(packages: list[str]) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        rc = subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL)
        if rc != 0:
            # A stale package index is the usual cause; refresh once and retry.
            subprocess.call(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
            rc = subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        note(f"apt-get failed to run: {exc}")
        return False
    return rc == 0


def ensure_perl() -> None:
    if perl_has_anyevent_fork():
        return
    if shutil.which("apt-get") is None:
        note("AnyEvent::Fork missing and apt-get not found; the Perl rows are not available")
        return
    if os.geteuid() != 0:
        note("AnyEvent::Fork missing and not root; the Perl rows are not available")
        return
    note("installing " + " ".join(PERL_PACKAGES) + " with apt-get")
    if not apt_install(PERL_PACKAGES) and not apt_install(PERL_PACKAGES[:1]):
        note("apt-get install failed; the Perl rows are not available")
        return
    if not perl_has_anyevent_fork():
        note("AnyEvent::Fork still not loadable after install; the Perl rows are not available")


def main() -> None:
    ensure_module("numpy", "the numpy-template row will be skipped")
    ensure_module("loky", "the loky rows (bench/pool.py) will say n/a")
    try:
        ensure_perl()
    except Exception as exc:  # never fail the bench over an optional peer
        note(f"Perl setup failed ({type(exc).__name__}: {exc}); the Perl rows are not available")


if __name__ == "__main__":
    main()
