"""Every command in the docs runs as a reader would paste it, and every link resolves.

Which commands: the fenced blocks of language ``console`` in README.md, docs/*.md and
docs/deploy/*.md. Each block is one test. Blocks of other languages (``bash``, ``yaml``,
``python``) are never run: they hold what cannot run here (servers that never exit,
kubectl, docker, make targets that build the project).

What a ``console`` block holds (a reader sees an ordinary shell transcript):

- ``$ `` starts a command. A command line that ends in ``\\`` goes on to the next line.
- A command is expected to exit with status 0, unless its line ends with the comment
  ``# exit N``: then with N (bash ignores the comment, so the line still pastes as is).
- The other non-empty lines after a command are its expected output. Each must equal a
  line of what the command printed (stdout and stderr together, trailing spaces ignored),
  in order, each after the previous one's; ``...`` in an expected line stands for any text.
  Lines the block does not show are not checked.

How a block runs: its commands go, in order, to one bash process (a variable one command
sets serves the next), in a new temporary directory that holds a copy of ``examples/`` as
the repository root would. The environment has:

- ``MCP_DB_REDIS_URL``: a redis-server of the test session, on a free port
  (``tests/support/redis_server.py``);
- ``MCP_DB_PREFIX``: a key prefix of this module's own;
- ``MCP_URL``: the MCP endpoint of a live deployment, two nodes of tests/servers/app.py with
  ``SessionMiddleware`` behind nginx round robin (``tests/_cluster.py``), on that Redis and
  prefix. It is started only if some block uses ``$MCP_URL`` or ``mcp-db``;
- ``PATH`` with this Python's bin directory first, so ``python3`` and ``mcp-db`` are the
  ones installed with the package under test.

A block that names a program a machine may lack (``curl``, ``haproxy``, ``nginx``,
``redis-cli``) is
skipped there, saying which. ``mcp-db`` is never skipped: it is installed with the package.

Links: every relative link in those files must name an existing file, and its ``#anchor``
a heading of that file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "docs" / "deploy").glob("*.md")]
)
#: Programs a block may need that a machine may lack; the block is skipped without them.
PROGRAMS = ("curl", "haproxy", "nginx", "redis-cli")
PREFIX = f"docs-{uuid.uuid4().hex[:8]}"
BLOCK_SECONDS = 30
MARK = "@@mcp-db-docs@@"


@dataclass
class Command:
    line: int
    text: str
    exit: int
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[Command]:
        commands: list[Command] = []
        continuing = False
        for offset, raw in enumerate(self.text.splitlines()):
            line = raw.rstrip()
            if continuing:
                commands[-1].text += "\n" + line
            elif line.startswith("$ "):
                commands.append(Command(self.line + 1 + offset, line[2:], 0))
            elif line.strip():
                if not commands:
                    raise AssertionError(f"{self.name}: output before any command: {line!r}")
                commands[-1].expected.append(line)
                continue
            continuing = line.endswith("\\")
            exit_code = re.search(r"#\s*exit\s+(\d+)\s*$", line)
            if exit_code and not continuing:
                commands[-1].exit = int(exit_code.group(1))
        return commands


def _blocks(pages: list[Path]) -> list[Block]:
    blocks: list[Block] = []
    for page in pages:
        language: str | None = None
        start = 0
        body: list[str] = []
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if language is None and line.startswith("```"):
                language, start, body = line[3:].strip(), number, []
            elif language is not None and line.startswith("```"):
                blocks.append(Block(page, start, language, "\n".join(body)))
                language = None
            elif language is not None:
                body.append(line)
    return blocks


BLOCKS = _blocks(PAGES)
CONSOLE = [b for b in BLOCKS if b.language == "console"]


def _path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _missing(block: Block) -> list[str]:
    """The programs ``block`` names that are not installed."""
    named = {
        word
        for word in PROGRAMS
        if re.search(rf"(?<![\w./-]){re.escape(word)}(?![\w.-])", block.text)
    }
    return sorted(word for word in named if shutil.which(word, path=_path()) is None)


def _needs_deployment(block: Block) -> bool:
    return "MCP_URL" in block.text or re.search(r"(?<![\w./-])mcp-db\s", block.text) is not None


@pytest.fixture(scope="module")
def deployment(redis_server: RedisServer) -> Iterator[str]:
    """``MCP_URL`` of two nodes behind nginx, on the session's redis-server."""
    from tests._cluster import Cluster

    cluster = Cluster(redis_server, PREFIX, size=2).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def _script(commands: list[Command]) -> str:
    parts = ["exec 2>&1"]
    for index, command in enumerate(commands):
        parts.append(command.text)
        parts.append(f"printf '\\n{MARK} {index} %d\\n' \"$?\"")
    # Background jobs of the block (a stream held open, say) end with it.
    parts.append("jobs -p | xargs -r kill 2>/dev/null; wait")
    return "\n".join(parts) + "\n"


def _run(block: Block, env: dict[str, str], cwd: Path) -> list[tuple[int, list[str]]]:
    """Runs the block's commands; their exit statuses and output lines, in order."""
    commands = block.commands()
    process = subprocess.Popen(
        ["bash", "--noprofile", "--norc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        text=True,
        start_new_session=True,  # its own process group, ended below if it hangs
    )
    try:
        out, _ = process.communicate(_script(commands), timeout=BLOCK_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise AssertionError(f"{block.name} ran over {BLOCK_SECONDS} s:\n{out}") from None
    results: list[tuple[int, list[str]]] = []
    lines: list[str] = []
    for line in out.splitlines():
        if line.startswith(MARK + " "):
            results.append((int(line.split()[2]), lines))
            lines = []
        else:
            lines.append(line.rstrip())
    return results


def _matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def _check(command: Command, status: int, output: list[str], block: Block) -> None:
    shown = "\n".join(output)
    where = f"{block.page.relative_to(ROOT)}:{command.line}: $ {command.text}"
    assert status == command.exit, f"{where}\nexited {status}, not {command.exit}:\n{shown}"
    position = 0
    for expected in command.expected:
        while position < len(output) and not _matches(expected, output[position]):
            position += 1
        assert position < len(output), f"{where}\nno line {expected!r} in:\n{shown}"
        position += 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("block", CONSOLE, ids=[b.name for b in CONSOLE])
@pytest.mark.one_sdk_line
def test_console_block_runs(
    block: Block, request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> None:
    missing = _missing(block)
    if "mcp-db" in missing:
        pytest.skip("the mcp-db command is not installed (the CLI of issue 5)")
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    env = {
        **os.environ,
        "PATH": _path(),
        "MCP_DB_REDIS_URL": redis_server.url,
        "MCP_DB_PREFIX": PREFIX,
    }
    env.pop("MCP_URL", None)
    if _needs_deployment(block):
        env["MCP_URL"] = request.getfixturevalue("deployment")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    commands = block.commands()
    assert commands, f"{block.name}: a console block without a command"
    results = _run(block, env, tmp_path)
    assert len(results) == len(commands), f"{block.name}: the shell stopped early: {results}"
    for command, (status, output) in zip(commands, results, strict=True):
        _check(command, status, output, block)


# -- links --------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def _links(page: Path) -> Iterator[tuple[int, str]]:
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if not re.match(r"[a-z]+:", target):
                yield number, target


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_resolve(page: Path) -> None:
    broken = []
    for number, target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}:{number}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{page.name}:{number}: {target} (no such heading)")
    assert broken == []


# -- blocks that are not run ----------------------------------------------------------------


YAML = [b for b in BLOCKS if b.language == "yaml"]


@pytest.mark.parametrize("block", YAML, ids=[b.name for b in YAML])
def test_yaml_block_parses(block: Block) -> None:
    yaml = pytest.importorskip("yaml")
    assert list(yaml.safe_load_all(block.text)), f"{block.name} is empty"


MERMAID = [b for b in BLOCKS if b.language == "mermaid"]
_DIAGRAMS = ("stateDiagram-v2", "sequenceDiagram", "flowchart ")


@pytest.mark.parametrize("block", MERMAID, ids=[b.name for b in MERMAID])
def test_mermaid_block_names_its_diagram(block: Block) -> None:
    # GitHub renders these; a typo in the first line would show the source instead.
    assert block.text.lstrip().startswith(_DIAGRAMS), block.text.splitlines()[:1]
