"""The main command runs: a tiny `python -m taskbound bench` on each loop
prints every contender of ours, in C and in the reference, with ratios,
and writes its JSON, with the limiter rows, the Redis row (on a redis-server it
starts) and the HTTP row (on an aiohttp server it starts). (Speed itself is for bench/, not for tests.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from taskbound._benchadaptive import PEERS
from taskbound._benchlimiter import BINDING_RATE
from taskbound._common import TIMER_LATENESS

RATE_SECONDS = 1.5      # the first is not counted


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bench_runs_and_reports_every_contender(loop, tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "taskbound", "bench", "--items", "300",
         "--wait-items", "100", "--wait-ms", "1", "--stream-items", "500",
         "--rounds", "1", "--loop", loop, "--redis-pairs", "50",
         "--limiter-entries", "500", "--rate-seconds", str(RATE_SECONDS),
         "--http-requests", "300", "--crawl-urls", "500",
         "--llm-requests", "30", "--downloads", "50", "--api-calls", "100",
         "--adaptive-seconds", "2", "--adaptive-http-seconds", "0.3",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("task floor", "worker floor",
                 "TaskGroup + Semaphore before create_task",
                 "BoundedTaskGroup.spawn [C]", "amap [Python]",
                 "as_completed [C]", "gather [Python]",
                 "INCR/DECR pair (redis-py)",
                 "RedisLimiter acquire/release [C]", "x Semaphore",
                 "Limiter [C]", "switch floor", "RateLimiter [C]",
                 "achieved/rate", "HTTP fan-out", "peak RSS MiB",
                 "amap(item_limiter=per_host[...])",
                 "TaskGroup + Semaphore + per-host Semaphore",
                 "most tokens", "peak on disk", "Limiter.pause(retry_after)",
                 "AdaptiveLimiter, Gradient2()", "targets, AdaptiveLimiter"):
        assert name in done.stdout
    figures = json.loads(out.read_text())
    rows = figures["workloads"]["trivial"]["rows"]
    baseline = [r for r in rows
                if r["contender"].startswith("TaskGroup + Semaphore before")]
    assert baseline[0]["ratio_to_baseline"] == pytest.approx(1.0)
    spawn = [r for r in rows if r["contender"] == "BoundedTaskGroup.spawn [C]"]
    assert spawn[0]["peak_live_tasks"] <= 101
    assert set(figures["workloads"]) == {
        "trivial", "short wait", "streaming", "limiter", "rate limiter",
        "redis", "http", "crawl", "llm", "disk", "push-back", "adaptive"}
    # The limits rows keep their budgets (the figures themselves are for
    # bench/README.md).
    llm = figures["workloads"]["llm"]
    assert llm["requests"] == 30
    assert llm["most tokens in 1 s"] <= llm["tpm"] + llm["tpm"] // 10
    disk = figures["workloads"]["disk"]
    assert 0 < disk["peak"] <= disk["disk"]
    crawl = figures["workloads"]["crawl"]["rows"]
    assert len(crawl) == 3 and all(
        row["others_per_second_alone"] > 0 for row in crawl)
    limiter_rows = figures["workloads"]["limiter"]["rows"]
    assert set(limiter_rows["alone"]) == {
        "asyncio.Semaphore", "Limiter [C]", "Limiter [Python]"}
    assert set(limiter_rows["shared"]) == set(limiter_rows["alone"]) | {
        "switch floor"}
    assert all(rate > 0 for rows in limiter_rows.values()
               for rate in rows.values())
    rate_rows = figures["workloads"]["rate limiter"]["rows"]
    assert {"RateLimiter [C]", "RateLimiter [Python]"} <= set(
        rate_rows["starts"])
    assert set(rate_rows["achieved"]) == set(rate_rows["starts"])
    # A share of the configured rate; ours (burst 1) go above it by no more
    # than the starts that came due while a timer was late.
    assert all(share > 0 for share in rate_rows["achieved"].values())
    counted = BINDING_RATE * (RATE_SECONDS - 1)
    most = 1 + (1 + math.ceil(TIMER_LATENESS * BINDING_RATE)) / counted
    assert rate_rows["achieved"]["RateLimiter [C]"] <= most
    redis_rows = figures["workloads"]["redis"]["rows"]
    assert [r["contender"] for r in redis_rows] == [
        "INCR/DECR pair (redis-py)", "RedisLimiter acquire/release [C]",
        "RedisLimiter acquire/release [Python]"]
    assert redis_rows[0]["ratio_to_incr_decr"] == pytest.approx(1.0)
    http_rows = {r["contender"]: r for r in figures["workloads"]["http"]["rows"]}
    assert {"TaskGroup + Semaphore before create_task",
            "TaskGroup + Semaphore inside the task", "gather + Semaphore",
            "BoundedTaskGroup.spawn [C]", "amap [C]"} <= set(http_rows)
    assert http_rows["TaskGroup + Semaphore before create_task"][
        "ratio_to_baseline"] == pytest.approx(1.0)
    assert all(r["requests_per_second"] > 0
               and r["peak_rss_kib"] >= r["rss_growth_kib"] >= 0
               for r in http_rows.values())


def test_bench_adaptive_section_alone(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "taskbound", "bench", "adaptive",
         "--adaptive-seconds", "2", "--adaptive-http-seconds", "0.5",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "skipped" not in done.stdout
    figures = json.loads(out.read_text())
    assert set(figures["workloads"]) == {"adaptive"}
    adaptive = figures["workloads"]["adaptive"]
    assert set(adaptive["scenarios"]) == {
        "steady", "capacity halves", "capacity doubles",
        "latency noise high"}
    peers = set(PEERS)
    for runs in adaptive["scenarios"].values():
        assert {"fixed 40", "best fixed", "AdaptiveLimiter, Gradient2()"
                } | peers <= set(runs)
        # Every contender got answers, the peers through their own APIs.
        assert all(run["goodput"] > 0 for run in runs.values())
    # Per adaptive contender: 3 per scenario, all scenarios against the
    # fixed limits, one per peer, the re-convergence.
    assert all(len(checks) == 4 * 3 + 1 + len(peers) + 1
               for checks in adaptive["targets"].values())
    # The real-time rows, against the local aiohttp server.
    http = adaptive["http"]
    assert {"fixed 20", "AdaptiveLimiter, Gradient2()"} <= set(http)
    assert all(run["goodput"] > 0 and run["requests"] > 0
               for run in http.values())
    assert http["fixed 20"]["limit_at_end"] is None
    assert 1 <= http["AdaptiveLimiter, Gradient2()"]["limit_at_end"] <= 1000


def test_bench_usage_error():
    done = subprocess.run([sys.executable, "-m", "taskbound"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
