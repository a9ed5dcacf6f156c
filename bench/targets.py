"""Checks the spec's performance targets, one line each: PASS/FAIL, the
measured ratio and the goal.

Usage: python bench/targets.py [--loop asyncio|uvloop] [--items N]
                               [--rounds N] [--limiter-entries N]
                               [--skip-memory]

Ratios are taken side by side in one run (interleaved rounds, medians), so
they hold on a noisy machine where absolute timings do not.
"""

from __future__ import annotations

import argparse
import sys

from taskbound import _bench


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop", choices=["asyncio", "uvloop"],
                        default="asyncio")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--limiter-entries", type=int, default=100_000)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.limiter_entries < 1000:
        parser.error("--limiter-entries must be at least 1,000")

    found, missing = _bench.contenders()
    chosen = [c for c in found if "[Python]" not in c.name]
    results = _bench.measure(chosen, args.loop, args.items, args.limit, 0.0,
                             args.rounds, False, "targets")
    rate = {name: r.rate(args.items) for name, r in results.items()}
    lines = []

    def check(label: str, value: float, goal: float) -> None:
        verdict = "PASS" if value >= goal else "FAIL"
        lines.append((verdict, f"{verdict}  {label}: {value:.2f} "
                               f"(goal >= {goal:.2f})"))

    for name in ("BoundedTaskGroup.spawn [C]",
                 "BoundedTaskGroup.create_task [C]"):
        check(f"{name} / task floor", rate[name] / rate["task floor"], 0.90)
    for name in ("amap [C]", "amap(ordered=False) [C]", "as_completed [C]",
                 "gather [C]"):
        check(f"{name} / worker floor", rate[name] / rate["worker floor"],
              0.85)
    ours = {"task": "BoundedTaskGroup.spawn [C]", "worker": "amap [C]"}
    for contender in found:
        if contender.name.split(" ")[0].split(".")[0] in (
                "quattro", "anyio", "asyncio_pool", "aiometer", "aiostream"):
            mine = ours[contender.kind]
            check(f"{mine} / {contender.name}",
                  rate[mine] / rate[contender.name], 1.0)
    for name in missing:
        lines.append(("FAIL", f"FAIL  {name} is not installed: not compared"))

    from taskbound import _benchlimiter, _taskbound
    limiter = _benchlimiter.measure({"C": _taskbound}, args.limiter_entries,
                                    args.rounds, _bench.new_loop, args.loop,
                                    _bench.progress)
    for case, goal in (("alone", 2.0), ("shared", 1.5)):
        rows = limiter[case]
        check(f"Limiter [C] / asyncio.Semaphore, {case}",
              rows["Limiter [C]"] / rows["asyncio.Semaphore"], goal)
    rates = _benchlimiter.measure_rates({"C": _taskbound},
                                        args.limiter_entries, 5.0,
                                        args.rounds, _bench.new_loop,
                                        args.loop, _bench.progress)
    if "aiolimiter.AsyncLimiter" in rates["starts"]:
        starts = rates["starts"]
        check("RateLimiter [C] / aiolimiter.AsyncLimiter, nobody waits",
              starts["RateLimiter [C]"] / starts["aiolimiter.AsyncLimiter"],
              1.0)
    else:
        lines.append(("FAIL", "FAIL  aiolimiter is not installed: not "
                              "compared"))
    for name, share in rates["achieved"].items():
        check(f"{name}: achieved / configured rate, 2,000/s binding",
              share, 0.99)
    rows = limiter["shared"]
    lines.append(("INFO", "INFO  switch floor / asyncio.Semaphore, shared: "
                          f"{rows['switch floor'] / rows['asyncio.Semaphore']:.2f}"
                          " (the most a FIFO limiter waking its waiters "
                          "through the loop's futures can reach)"))

    if not args.skip_memory:
        amap = next(c for c in found if c.name == "amap [C]")
        peaks = {}
        for count in (100_000, 1_000_000):
            _bench.progress(f"memory: amap [C], {count:,} items")
            peaks[count] = _bench.run_once(amap, args.loop, count, args.limit,
                                           0.0, trace_memory=True)[2]
        growth = peaks[1_000_000] / peaks[100_000]
        verdict = "PASS" if growth <= 1.10 else "FAIL"
        lines.append((verdict, f"{verdict}  amap [C] peak memory at 1M / "
                               f"at 100k: {growth:.2f} (goal <= 1.10)"))
        mib = peaks[1_000_000] / 2**20
        verdict = "PASS" if mib < 5 else "FAIL"
        lines.append((verdict, f"{verdict}  amap [C] peak memory at 1M: "
                               f"{mib:.2f} MiB (goal < 5)"))

    print(f"targets on {args.loop}, {args.items:,} items, limit "
          f"{args.limit}, {args.rounds} rounds")
    for _, line in lines:
        print(line)
    return 0 if all(verdict in ("PASS", "INFO") for verdict, _ in lines) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
