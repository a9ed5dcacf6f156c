"""Every Python block of README.md and bench/README.md runs as it stands, on
both implementations and both loops, with nothing on stderr (no warning, no
"never awaited", no call of the loop's exception handler). A block that is
only a piece of a program says so in its info string (```python fragment)
and is compiled, not run."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMPLEMENTATIONS, LOOPS

TOP = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "bench/README.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```$", re.S | re.M)

# Runs a block as a script would run: asyncio.run() on the loop asked for.
RUNNER = """\
import asyncio, sys
if sys.argv[1] == "uvloop":
    import uvloop
    def run(main, *, debug=None, **ignored):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop,
                            debug=debug) as runner:
            return runner.run(main)
    asyncio.run = run
source = sys.stdin.read()
exec(compile(source, sys.argv[2], "exec"), {"__name__": "__main__"})
"""


def python_blocks(document: str) -> list[tuple[str, str, str]]:
    """(id, info string, source) of each fenced block in Python."""
    text = (TOP / document).read_text()
    blocks = []
    for match in FENCE.finditer(text):
        info, source = match.group(1).strip(), match.group(2)
        if info.split()[:1] in (["python"], ["py"], ["python3"], ["pycon"]):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{document}:{line}", info, source))
    return blocks


BLOCKS = [block for document in DOCUMENTS for block in python_blocks(document)]


def test_the_documents_have_python_blocks():
    assert sum(1 for _, info, _ in BLOCKS if info == "python") >= 4


@pytest.mark.parametrize("where, info, source", BLOCKS,
                         ids=[where for where, _, _ in BLOCKS])
def test_block_is_marked(where, info, source):
    """Only two kinds: a whole program, or a piece marked as one."""
    assert info in ("python", "python fragment"), (
        f"{where}: write ```python or ```python fragment, not ```{info}")
    compile(source, where, "exec",
            flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


RUNNABLE = [block for block in BLOCKS if block[1] == "python"]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("where, info, source", RUNNABLE,
                         ids=[where for where, _, _ in RUNNABLE])
def test_block_runs(where, info, source, implementation, loop, request):
    env = dict(os.environ,
               TASKBOUND_PURE_PYTHON="1" if implementation == "python" else "0")
    if "redis" in source:
        server = request.getfixturevalue("redis_server")
        env["REDIS_URL"] = f"redis://127.0.0.1:{server.port}"
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", RUNNER, loop,
         where], input=source, env=env, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, f"{where}:\n{done.stderr}"
    assert done.stderr == "", f"{where}:\n{done.stderr}"
    assert done.stdout.strip(), f"{where} printed nothing"
