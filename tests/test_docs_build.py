"""``make docs``'s build (``mkdocs build --strict``: any warning fails it) runs here too, into
a temporary directory: the reference pages come from the docstrings, every internal link and
anchor resolves, and the charts appear in the built site."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_without_warnings_and_shows_the_charts(tmp_path: Path) -> None:
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stderr, out.stderr
    page = (site / "benchmarks" / "index.html").read_text()
    charts = re.findall(r'<img[^>]+src="\.\./(plots/[\w-]+\.svg)"', page)
    assert len(charts) >= 6, charts
    for chart in charts:
        svg = (site / chart).read_text()
        assert svg.lstrip().startswith("<?xml")
        assert "<svg" in svg
        assert re.search(r"\d{4}-\d\d-\d\d", svg), f"{chart} does not say when it was measured"
    reference = (site / "reference" / "processes" / "index.html").read_text()
    for name in ("anyfork.new", "anyfork.Process", "anyfork.new_exec", "anyfork.main_template"):
        assert f'id="{name}"' in reference, name
