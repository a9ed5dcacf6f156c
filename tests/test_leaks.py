"""Leak checks: each scenario runs many times in a fresh process
(tests/leakcheck.py) and nothing may grow with the number of cycles: live
objects per type, the reference counts of what every cycle touches, traced
memory. TASKBOUND_LEAK_CYCLES sets the cycles (5,000 by default; .ci/run
runs 100,000). A leak of one object per cycle shows as thousands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CYCLES = int(os.environ.get("TASKBOUND_LEAK_CYCLES", "5000"))
SCENARIOS = ["spawn_success", "spawn_error", "spawn_cancel",
             "create_task_abort", "stream_break", "per_item", "weighted",
             "adaptive"]
# What the census itself leaves behind (its own Counter, weak references
# asyncio makes once): a constant, far below CYCLES.
MAX_GROWTH_PER_TYPE = 100
MAX_TRACED_GROWTH = 128 * 1024

pytestmark = pytest.mark.leak


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nothing_grows_with_the_cycles(impl, run, scenario):
    script = Path(__file__).with_name("leakcheck.py")
    env = dict(os.environ)
    env.pop("PYTHONMALLOC", None)
    done = subprocess.run(
        [sys.executable, str(script), impl.name, run.loop_kind, scenario,
         str(CYCLES)],
        capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    print(f"{impl.name}/{run.loop_kind}/{scenario}: {CYCLES:,} cycles, "
          f"objects {report['objects_before']:,} -> "
          f"{report['objects_after']:,}, traced "
          f"{report['traced_before']:,} -> {report['traced_after']:,} B")
    assert report["handler_calls"] == []
    assert report["borrowed_after"] == 0
    assert report["refcounts_after"] == report["refcounts_before"]
    too_many = {name: n for name, n in report["grown_types"].items()
                if n > MAX_GROWTH_PER_TYPE}
    assert not too_many, too_many
    growth = report["traced_after"] - report["traced_before"]
    assert growth < MAX_TRACED_GROWTH, growth
    assert "never awaited" not in done.stderr
    assert "destroyed" not in done.stderr
