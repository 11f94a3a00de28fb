"""Every ```python block of the documentation (docs/**/*.md) runs here, so no example can rot;
and every internal link of the site resolves (file and anchor).

How a page's blocks run (in order, in a fresh directory per page):

* A block titled as a module, ```python title="mymod.py"```, is written there as that file
  (a module the page's later blocks use: the function a worker runs, say); some later block
  of the page must import it.
* Every other block is a script run by this interpreter in a subprocess of its own session,
  with that directory first on ``sys.path``, under a deadline; it must exit 0 and leave no
  process of its session behind.
* A block whose first line is ``# needs: remote`` needs the remote module (``anyfork.remote``)
  and an ssh server on localhost: it runs only where the module exists; elsewhere it is only
  compiled.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import remote_support
from helpers import eventually
from sshd import SshServers

sshd = remote_support.sshd  # the suite's SSH servers, for the blocks that need a host

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DEADLINE = 120  # seconds per block, under a loaded 2-CPU machine
REMOTE = "# needs: remote"
HAVE_REMOTE = importlib.util.find_spec("anyfork.remote") is not None

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<info>[^\n`]*)$")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    title: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced code blocks of a page, in order (their indentation removed)."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page}:{start + 1}: unclosed code block")
        i += 1
        lang = info.split()[0] if info else ""
        title = _TITLE.search(info)
        found.append(
            Block(page, start + 1, lang, title["title"] if title else None, "\n".join(body) + "\n")
        )
    return found


PAGES = sorted(DOCS.rglob("*.md"))
PYTHON_PAGES = [p for p in PAGES if any(b.lang == "python" for b in blocks_of(p))]


def test_the_docs_have_runnable_examples() -> None:
    assert len(PYTHON_PAGES) >= 10
    blocks = [b for p in PYTHON_PAGES for b in blocks_of(p) if b.lang == "python"]
    assert len(blocks) >= 30


def test_python_blocks_are_marked_python() -> None:
    """A block without a language (or ```py```) would escape this test: refuse it."""
    for page in PAGES:
        for block in blocks_of(page):
            assert block.lang in {"python", "text", "console", "perl", "mermaid"}, (
                f"{block.id}: code block language {block.lang!r}"
            )


def _run(block: Block, workdir: Path) -> None:
    path = workdir / f"block_{block.line}.py"
    path.write_text(block.code)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), env.get("PYTHONPATH", "")]).rstrip(":")
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{block.id}: still running after {DEADLINE} s\n{out}") from None

    def session_gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        eventually(session_gone, timeout=15, what=f"the processes of {block.id} to exit")
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"{block.id}: left processes behind\n{out}") from None
    assert proc.returncode == 0, f"{block.id}: exit status {proc.returncode}\n{out}"


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page: Path, tmp_path: Path, sshd: SshServers) -> None:
    """Every python block of the page, in order (a block titled ``mod.py`` is a module the later
    ones import).  The suite's SSH servers stand in for the host the remote blocks name."""
    blocks = [b for b in blocks_of(page) if b.lang == "python"]
    for n, block in enumerate(blocks):
        compile(block.code, block.id, "exec")
        if block.title is not None:
            assert block.title.endswith(".py"), f"{block.id}: title {block.title!r}"
            name = block.title[:-3]
            assert name.isidentifier(), f"{block.id}: {block.title!r} is no module name"
            later = "".join(b.code for b in blocks[n + 1 :])
            assert re.search(rf"\b{name}\b", later), f"{block.id}: no later block uses {name}"
            (tmp_path / block.title).write_text(block.code)
        elif block.code.startswith(REMOTE) and not HAVE_REMOTE:
            continue  # compiled above; run where anyfork.remote exists
        elif block.code.startswith(REMOTE):
            host = f'Host("host1", ssh_options={sshd.ssh_options!r},'
            code = block.code.replace('Host("localhost",', host)
            assert code != block.code, f"{block.id}: a remote block names Host('localhost', ...)"
            _run(dataclasses.replace(block, code=code), tmp_path)
        else:
            _run(block, tmp_path)


# -- links -------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)|!\[[^\]]*\]\((?P<image>[^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*(\{#(?P<id>[\w-]+)\})?$")


def slug(text: str) -> str:
    """Python-Markdown's toc slug: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", lambda m: "" if m[0] != "_" else "_", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        m = _HEADING.match(line)
        if m:
            found.add(m["id"] or slug(m["text"]))
        elif line.startswith("::: "):
            found.add(line[4:].strip())  # mkdocstrings: the object's full name is its anchor
    return found


def outside_code(page: Path) -> str:
    return re.sub(r"^[ \t]*```.*?^[ \t]*```", "", page.read_text(), flags=re.M | re.S)


def test_internal_links_resolve() -> None:
    bad = []
    for page in PAGES:
        for m in _LINK.finditer(outside_code(page)):
            target = m["target"] or m["image"]
            if re.match(r"[a-z]+:", target):
                continue  # external (https:, mailto:)
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(DOCS)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.relative_to(DOCS)}: {target}: no such heading")
    assert not bad, "\n".join(bad)


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        rel = str(page.relative_to(DOCS))
        assert rel == "README.md" or f": {rel}" in nav, f"{rel} is not in mkdocs.yml's nav"
