"""Packaging: the wheel and sdist build, pass ``twine check``, carry the one version and
``py.typed``, and a typed consumer of the installed wheel type-checks under ``mypy --strict``."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import anyfork

ROOT = Path(__file__).resolve().parent.parent

CONSUMER = """\
import anyfork

def start() -> anyfork.Process:
    return anyfork.new().require("json")

async def call(proc: anyfork.Process) -> int:
    client: anyfork.Client = await proc.rpc("operator:add")
    result = await client(1, 2)
    assert isinstance(result, int)
    return result
"""

# A consumer that misuses the API: mypy must see anyfork's types (not Any) to catch these.
WRONG = """\
import anyfork

proc: int = anyfork.new()
anyfork.new().require(1)
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "-o", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def one(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_the_version_comes_from_one_place() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+)
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M)
    assert 'dynamic = ["version"]' in project
    assert 'path = "src/anyfork/__init__.py"' in pyproject.split("[tool.hatch.version]", 1)[1]
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", anyfork.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {anyfork.__version__}" in changelog


def test_wheel_and_sdist_carry_the_version_and_py_typed(dist: Path) -> None:
    wheel = one(dist, f"anyfork-{anyfork.__version__}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"anyfork-{anyfork.__version__}.dist-info/METADATA").decode()
    assert "anyfork/py.typed" in names
    assert "anyfork/_child/_wire.py" in names
    assert "anyfork/joblib.py" in names
    assert not any(n.startswith(("tests/", "docs/")) for n in names)
    assert f"Version: {anyfork.__version__}" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires
    assert all("extra ==" in line for line in requires), requires  # no runtime dependency
    sdist = one(dist, f"anyfork-{anyfork.__version__}.tar.gz")
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"src/anyfork/py.typed", "CHANGELOG.md", "pyproject.toml", "mkdocs.yml"} <= members
    assert not any(".venv" in m or m.startswith("bench/results") for m in members)


def test_twine_check_passes(dist: Path) -> None:
    files = sorted(str(p) for p in dist.iterdir())
    out = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("PASSED") == 2


def test_a_typed_consumer_of_the_installed_wheel(dist: Path, tmp_path: Path) -> None:
    """Installed from the wheel into a fresh environment (not this checkout's src/), anyfork's
    annotations reach the consumer: a correct one passes ``mypy --strict``, a wrong one fails."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    wheel = one(dist, "*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q",
         "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    (tmp_path / "good.py").write_text(CONSUMER)
    (tmp_path / "wrong.py").write_text(WRONG)

    def mypy(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable",
             str(env / "bin" / "python"), "--config-file", "/dev/null", name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip

    good = mypy("good.py")
    assert good.returncode == 0, good.stdout + good.stderr
    wrong = mypy("wrong.py")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert 'Incompatible types in assignment (expression has type "Process"' in wrong.stdout
    assert 'incompatible type "int"; expected "str"' in wrong.stdout
