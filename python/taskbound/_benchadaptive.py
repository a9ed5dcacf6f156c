"""The bench's adaptive rows: an AdaptiveLimiter against fixed limits, on a
simulated server, on a virtual clock (so a run is exact, repeatable, and
takes only the time its Python takes).

The server serves `capacity` requests at once, each for a service time
drawn from a seeded log-normal distribution, queues up to QUEUE_ROUNDS x
capacity more in front (FIFO), and answers 503 beyond that (after a
network round trip of a tenth of the mean service time). Waiting requests
are not free to it: each service time is stretched by CONTENTION times
the queue's length over the capacity (the connections, memory and context
switches a backlog costs a real server: the retrograde part of Gunther's
Universal Scalability Law), so a limit above the capacity costs goodput,
not only latency. The client gives up on a request after TIMEOUT_ROUNDS
mean service times; the server does not know, and still spends the time
on it when it comes to it.
The client has an endless backlog and runs it through a BoundedTaskGroup
whose limiter is the contender: a fixed Limiter(n), or an AdaptiveLimiter,
which sees each request's time as its hold and timeouts and 503s as drops;
or a Python peer from the index drives the same requests through its own
API (a driver each, below).

Scenarios: steady; capacity halves mid-run; capacity doubles mid-run;
steady with high service-time noise. Each reports goodput (answers in time
per second), p50/p99 latency of those answers, the overload errors as a
share of requests, and, after a change, the round trips the limit took to
come within 10% of the new capacity and stay there.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
from typing import NamedTuple

CAPACITY = 40           # concurrent requests, before any change
SERVICE = 0.05          # mean seconds per request
QUEUE_ROUNDS = 4        # the server's queue holds this many capacities
TIMEOUT_ROUNDS = 10     # the client gives up after this many mean services
CONTENTION = 0.1        # service stretch per capacity's worth of queue
DURATION = 40.0         # seconds of virtual time per run
CHANGE_AT = 20.0        # when a change of capacity happens
SEED = 20261204


class Scenario(NamedTuple):
    name: str
    capacity_after: float   # times CAPACITY, from CHANGE_AT on
    sigma: float            # of the log-normal service time


SCENARIOS = (
    Scenario("steady", 1.0, 0.3),
    Scenario("capacity halves", 0.5, 0.3),
    Scenario("capacity doubles", 2.0, 0.3),
    Scenario("latency noise high", 1.0, 1.0),
)


class Server:
    """The simulated server: no task per request, only loop timers."""

    def __init__(self, loop, capacity: int, sigma: float, seed: int,
                 mean: float = SERVICE) -> None:
        self.loop = loop
        self.capacity = capacity
        self.queue_size = QUEUE_ROUNDS * capacity
        self.refusal = mean / 10
        self.queue: collections.deque = collections.deque()
        self.busy = 0
        self.rng = random.Random(seed)
        # A log-normal with that mean: mu = ln(mean) - sigma^2 / 2.
        self.mu = math.log(mean) - sigma * sigma / 2
        self.sigma = sigma

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._dispatch()

    def submit(self):
        """A future for the answer: None, or ConnectionError (a 503, which
        takes a network round trip to come back, as a real one does)."""
        answer = self.loop.create_future()
        if len(self.queue) >= self.queue_size and self.busy >= self.capacity:
            self.loop.call_later(self.refusal, self._refuse, answer)
        else:
            self.queue.append(answer)
            self._dispatch()
        return answer

    @staticmethod
    def _refuse(answer) -> None:
        if not answer.done():
            answer.set_exception(ConnectionError("503 Service Unavailable"))

    def _dispatch(self) -> None:
        while self.busy < self.capacity and self.queue:
            answer = self.queue.popleft()
            self.busy += 1
            service = self.rng.lognormvariate(self.mu, self.sigma)
            service *= 1.0 + CONTENTION * len(self.queue) / self.capacity
            self.loop.call_later(service, self._done, answer)

    def _done(self, answer) -> None:
        self.busy -= 1
        if not answer.done():       # (else the client gave up on it)
            answer.set_result(None)
        self._dispatch()


class Run(NamedTuple):
    goodput: float          # answers in time per second
    p50: float              # seconds, of the answers in time
    p99: float
    errors: float           # timeouts and 503s, a share of requests
    requests: int
    reconverge: float | None    # round trips, after the change
    trace: list             # (time, limit) every 0.25 s


def traced(run: Run) -> bool:
    """Whether the contender's limit moves (and so was traced)."""
    return any(limit is not None for _, limit in run.trace)


def percentile(values: list, q: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def reconvergence(trace: list, target: float, after: float) -> float | None:
    """Round trips from `after` until the limit is within 10% of `target`
    and stays so to the end; None if it never settles."""
    settled = None
    for when, limit in trace:
        if when < after:
            continue
        if abs(limit - target) <= 0.1 * target:
            if settled is None:
                settled = when
        else:
            settled = None
    return None if settled is None else (settled - after) / SERVICE


class Client:
    """One run's client side: the server, the requests and what they got.
    A driver (one per contender) decides when a request starts."""

    def __init__(self, loop, scenario: Scenario) -> None:
        self.loop = loop
        self.scenario = scenario
        self.server = Server(loop, CAPACITY, scenario.sigma, SEED)
        self.latencies: list = []
        self.errors = self.requests = 0
        self.limit_of = None        # the driver's current limit, if any
        self.start = loop.time()

    def running(self) -> bool:
        return self.loop.time() - self.start < DURATION

    async def request(self) -> bool:
        """One request; True if answered in time, False on a 503 or a
        timeout."""
        self.requests += 1
        started = self.loop.time()
        try:
            answer = self.server.submit()
            async with asyncio.timeout(TIMEOUT_ROUNDS * SERVICE):
                await answer
        except (ConnectionError, TimeoutError):
            self.errors += 1
            return False
        self.latencies.append(self.loop.time() - started)
        return True


async def run_client(module, drive, scenario: Scenario) -> Run:
    loop = asyncio.get_running_loop()
    client = Client(loop, scenario)
    trace: list = []

    def change() -> None:
        client.server.set_capacity(round(CAPACITY * scenario.capacity_after))

    def sample() -> None:
        limit_of = client.limit_of
        trace.append((loop.time(), limit_of() if limit_of else None))
        if loop.time() < client.start + DURATION:
            loop.call_later(0.25, sample)

    if scenario.capacity_after != 1.0:
        loop.call_at(client.start + CHANGE_AT, change)
    loop.call_soon(sample)      # once the driver has set its limit_of
    await drive(module, client)
    elapsed = loop.time() - client.start
    reconverge = None
    if client.limit_of is not None and scenario.capacity_after != 1.0:
        reconverge = reconvergence(
            trace, CAPACITY * scenario.capacity_after,
            client.start + CHANGE_AT)
    return Run(len(client.latencies) / elapsed,
               percentile(client.latencies, 0.5),
               percentile(client.latencies, 0.99),
               client.errors / max(1, client.requests), client.requests,
               reconverge, trace)


def simulate(module, drive, scenario: Scenario) -> Run:
    """One contender (a driver) through one scenario, on a virtual
    clock."""
    from ._virtualclock import VirtualClockLoop
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(run_client(module, drive, scenario))
    finally:
        loop.close()


# ---- the drivers: taskbound's ----

def fixed(limit: int):
    """A BoundedTaskGroup on a fixed Limiter(limit)."""
    async def drive(module, client: Client) -> None:
        await _group_backlog(module, client, module.Limiter(limit))
    return drive


def adaptive(make):
    """A BoundedTaskGroup on the AdaptiveLimiter make() returns: a 503 or
    a timeout is mark_overload()."""
    async def drive(module, client: Client) -> None:
        limiter = make(module)
        client.limit_of = lambda: limiter.total_tokens
        await _group_backlog(module, client, limiter, limiter.mark_overload)
    return drive


async def _group_backlog(module, client: Client, limiter,
                         on_overload=None) -> None:
    async def one() -> None:
        if not await client.request() and on_overload is not None:
            on_overload()

    async with module.BoundedTaskGroup(limiter=limiter) as tg:
        while client.running():
            await tg.spawn(one())


# ---- the drivers: the Python peers, each through its own API ----

class _VirtualTime:
    """Stands for the `time` module in a peer that reads the wall clock,
    so that its intervals pass on the virtual one."""

    def __init__(self, loop) -> None:
        self.time = self.perf_counter = self.monotonic = loop.time


def aimd_limiter_peer(module, client: Client):
    """aimd-limiter's AIMDAsyncLimiter: a rate (permits per second), not a
    concurrency, with slow start; each request holds a Permit and marks it
    a success or a failure. It starts at the rate of INITIAL requests in
    flight and may grow to that of 4 x capacity (max_rate is required)."""
    from aimd_limiter import AIMDAsyncLimiter

    async def drive() -> None:
        limiter = AIMDAsyncLimiter(max_rate=4 * CAPACITY / SERVICE,
                                   initial_rate=INITIAL / SERVICE)
        # Little's law: the concurrency that rate keeps in flight, at no
        # queue, for the trace.
        client.limit_of = lambda: limiter.current_rate * SERVICE

        async def one(permit) -> None:
            if await client.request():
                await permit.mark_success()
            else:
                await permit.mark_failure()

        async with asyncio.TaskGroup() as tg:
            while client.running():
                permit = await limiter.acquire()
                tg.create_task(one(permit))
    return drive()


def ace_peer(module, client: Client):
    """ace-concurrency's ACEAsyncioManager: an ACESemaphore whose limit an
    AIMD control loop moves every 2 s (5 s apart at least), from the
    client's own CPU, memory, queue and loop-lag signals, not from the
    requests. Its signals are given as an idle client's (the simulation's
    CPU is no client's), and its clock is the virtual one."""
    import logging

    import ace.core.control
    from ace import AIMDConfig, SignalCollector, SystemSignals
    from ace.core.logger import ACELogger
    from ace.integrations.asyncio_integration import ACEAsyncioManager

    class IdleClient(SignalCollector):
        def __init__(self) -> None:
            pass

        async def collect_all_async(self) -> SystemSignals:
            return SystemSignals(cpu_percent=10.0, memory_percent=30.0)

    async def drive() -> None:
        saved = ace.core.control.time
        ace.core.control.time = _VirtualTime(client.loop)
        try:
            manager = ACEAsyncioManager(
                AIMDConfig(min_limit=1, max_limit=1000,
                           initial_limit=INITIAL),
                logger=ACELogger(log_level=logging.CRITICAL + 1),
                signal_collector=IdleClient())
            client.limit_of = lambda: manager.get_stats()["limit"]

            async def one(slot) -> None:
                async with slot:
                    await client.request()

            async with manager, asyncio.TaskGroup() as tg:
                while client.running():
                    # submit()'s own two steps, the wait for a slot first,
                    # so that the backlog is not a task per request.
                    slot = await manager.semaphore.acquire()
                    tg.create_task(one(slot))
        finally:
            ace.core.control.time = saved
    return drive()


def adaptive_concurrency_peer(module, client: Client):
    """adaptive-concurrency's Controller (the decision logic of its
    arun_adaptive, which takes a finite list of batches): an observation
    per request, a batch of one item, and as many requests in flight as
    its setting's workers, re-read on every completion as arun_adaptive
    does. It probes workers one up at a time, keeps a probe that buys
    throughput and cuts on latency over its history."""
    from adaptive_concurrency import AdaptiveConfig, Controller, Observation

    async def drive() -> None:
        controller = Controller(AdaptiveConfig(
            batch_size=1, workers=INITIAL, max_workers=1000))
        client.limit_of = lambda: controller.setting.workers
        in_flight = 0
        freed = client.loop.create_future()

        async def one() -> None:
            nonlocal in_flight
            setting = controller.setting
            started = client.loop.time()
            ok = await client.request()
            controller.observe(Observation(
                setting, 1, client.loop.time() - started, ok, False))
            in_flight -= 1
            if not freed.done():
                freed.set_result(None)

        async with asyncio.TaskGroup() as tg:
            while client.running():
                if in_flight >= controller.setting.workers:
                    await freed
                    freed = client.loop.create_future()
                    continue
                in_flight += 1
                tg.create_task(one())
    return drive()


PEERS = {
    "aimd-limiter (rate, AIMD)": ("aimd_limiter", aimd_limiter_peer),
    "ace-concurrency (client signals)": ("ace", ace_peer),
    "adaptive-concurrency (probing)": ("adaptive_concurrency",
                                       adaptive_concurrency_peer),
}


def peer_contenders() -> tuple:
    """({name: driver} of the peers installed, [names missing])."""
    import importlib.util
    found, missing = {}, []
    for name, (module_name, peer) in PEERS.items():
        if importlib.util.find_spec(module_name) is None:
            missing.append(name)
        else:
            found[name] = peer
    return found, missing


# ---- the bench's rows ----

FIXED = (CAPACITY // 4, CAPACITY // 2, CAPACITY, 2 * CAPACITY,
         4 * CAPACITY)
INITIAL = 10            # where an adaptive limiter starts
# Error rates this close count as equal (against a peer's): the noise
# scenario's slowest requests time out at any limit.
ERRORS_EQUAL = 0.001


def adaptive_contenders(module) -> dict:
    """The AdaptiveLimiter contenders' drivers, by name."""
    from ._adaptive import AIMD, Gradient2, Probe
    return {
        "AdaptiveLimiter, Probe()": adaptive(
            lambda module: module.AdaptiveLimiter(
                INITIAL, algorithm=Probe())),
        "AdaptiveLimiter, Gradient2()": adaptive(
            lambda module: module.AdaptiveLimiter(
                INITIAL, algorithm=Gradient2())),
        # AIMD reacts to latency only past a threshold of its user's:
        # here 1.5 x the server's mean service time.
        f"AdaptiveLimiter, AIMD(timeout={1.5 * SERVICE:g})": adaptive(
            lambda module: module.AdaptiveLimiter(
                INITIAL, algorithm=AIMD(timeout=1.5 * SERVICE))),
    }


def best_fixed(runs: dict) -> str:
    """The fixed limit with the most goodput; among those within 1% of it,
    the one with the lowest p99."""
    fixed = {name: run for name, run in runs.items()
             if name.startswith("fixed")}
    top = max(run.goodput for run in fixed.values())
    near = [name for name, run in fixed.items() if run.goodput >= 0.99 * top]
    return min(near, key=lambda name: fixed[name].p99)


def measure(module, progress) -> dict:
    """{scenario name: {contender name: Run}}, the best fixed limit's run
    also under "best fixed"."""
    figures: dict = {}
    contenders = {f"fixed {n}": fixed(n) for n in FIXED}
    contenders.update(adaptive_contenders(module))
    contenders.update(peer_contenders()[0])
    for scenario in SCENARIOS:
        runs: dict = {}
        for name, contender in contenders.items():
            progress(f"adaptive: {scenario.name}, {name}")
            runs[name] = simulate(module, contender, scenario)
        runs["best fixed"] = runs[best_fixed(runs)]
        figures[scenario.name] = runs
    return figures


def targets(figures: dict, name: str) -> list:
    """(what, goal, figure, passed) of one adaptive contender."""
    checks = []
    totals = {}
    for scenario, runs in figures.items():
        run, best = runs[name], runs["best fixed"]
        checks.append((f"{scenario}: goodput / best fixed's", ">= 0.90",
                       run.goodput / best.goodput,
                       run.goodput >= 0.9 * best.goodput))
        checks.append((f"{scenario}: p99 / best fixed's", "<= 1.50",
                       run.p99 / best.p99, run.p99 <= 1.5 * best.p99))
        checks.append((f"{scenario}: overload errors", "<= 1%",
                       run.errors, run.errors <= 0.01))
        for contender, other in runs.items():
            if contender != "best fixed":
                totals[contender] = totals.get(contender, 0) + other.goodput
    single = max(total for contender, total in totals.items()
                 if contender.startswith("fixed"))
    checks.append(("all scenarios: goodput / any single fixed limit's",
                   "> 1.00", totals[name] / single, totals[name] > single))
    for peer in PEERS:
        if peer not in totals:
            continue
        fewer_errors = all(
            runs[name].errors <= runs[peer].errors + ERRORS_EQUAL
            for runs in figures.values())
        checks.append((f"ahead of {peer}: goodput / its, all scenarios",
                       "> 1.00", totals[name] / totals[peer],
                       totals[name] > totals[peer] and fewer_errors))
    halved = figures["capacity halves"][name].reconverge
    checks.append(("after capacity halves: round trips to within 10% of "
                   "the new capacity", "<= 20",
                   math.inf if halved is None else halved,
                   halved is not None and halved <= 20))
    return checks


def table(figures: dict) -> None:
    print(f"\nadaptive concurrency, simulated server on a virtual clock: "
          f"capacity {CAPACITY} (halving or doubling at {CHANGE_AT:g} s), "
          f"log-normal service of mean {SERVICE * 1000:g} ms, a queue of "
          f"{QUEUE_ROUNDS} x capacity then 503s, client timeout "
          f"{TIMEOUT_ROUNDS * SERVICE * 1000:g} ms, {DURATION:g} s per run")
    for scenario, runs in figures.items():
        print(f"\n  {scenario} (best fixed: {best_fixed(runs)})")
        print(f"  {'contender':38} {'goodput/s':>9} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'errors':>7} {'re-conv.':>8}")
        for name, run in runs.items():
            if name == "best fixed":
                continue
            again = "" if run.reconverge is None else f"{run.reconverge:.0f}"
            if run.reconverge is None and traced(run) \
                    and scenario.startswith("capacity"):
                again = "never"
            print(f"  {name:38} {run.goodput:9.1f} {run.p50 * 1000:7.1f} "
                  f"{run.p99 * 1000:7.1f} {run.errors:7.2%} {again:>8}")
    for name in next(iter(figures.values())):
        if not name.startswith("AdaptiveLimiter"):
            continue
        print(f"\n  targets, {name}:")
        for what, goal, figure, passed in targets(figures, name):
            shown = f"{figure:.2%}" if goal.endswith("%") else f"{figure:.2f}"
            print(f"    {what:72} {goal:>7} {shown:>7} "
                  f"{'PASS' if passed else 'FAIL'}")


def plot(path: str, figures: dict) -> None:
    """The limit over time of each adaptive contender, per scenario."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(len(figures), 1, figsize=(9, 3 * len(figures)),
                                sharex=True)
    for axis, (scenario, runs) in zip(axes, figures.items()):
        for name, run in runs.items():
            if traced(run):
                axis.plot([t for t, _ in run.trace],
                          [limit for _, limit in run.trace], label=name)
        after = SCENARIOS_BY_NAME[scenario].capacity_after
        axis.step([0, CHANGE_AT, DURATION],
                  [CAPACITY, CAPACITY * after, CAPACITY * after],
                  where="post", color="black", linestyle=":",
                  label="capacity")
        axis.set_title(scenario)
        axis.set_ylabel("limit")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    axes[-1].set_xlabel("seconds (virtual)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


SCENARIOS_BY_NAME = {s.name: s for s in SCENARIOS}


# ---- the cost of the samples ----

COST_ITEMS = 100_000


def measure_sample_cost(module, rounds: int, new_loop, loop_kind: str
                        ) -> dict:
    """Seconds per item of amap(limit=100) over trivial items, with a
    Limiter(100) and with AdaptiveLimiters held at 100 (min = max), so
    that the difference is the sampling: the best of `rounds`, side by
    side in each round."""
    from ._adaptive import AIMD, Gradient2, Probe

    async def ok(_):
        return None

    async def run(limiter) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for _ in module.amap(ok, range(COST_ITEMS), limit=100,
                                   limiter=limiter):
            pass
        return (loop.time() - started) / COST_ITEMS

    makers = {
        "Limiter(100)": lambda: module.Limiter(100),
        "AdaptiveLimiter, Gradient2()": lambda: module.AdaptiveLimiter(
            100, min_tokens=100, max_tokens=100, algorithm=Gradient2()),
        "AdaptiveLimiter, AIMD()": lambda: module.AdaptiveLimiter(
            100, min_tokens=100, max_tokens=100, algorithm=AIMD()),
        "AdaptiveLimiter, Probe()": lambda: module.AdaptiveLimiter(
            100, min_tokens=100, max_tokens=100, algorithm=Probe()),
    }
    best: dict = {}
    for _ in range(rounds):
        for name, make in makers.items():
            loop = new_loop(loop_kind)
            try:
                seconds = loop.run_until_complete(run(make()))
            finally:
                loop.close()
            best[name] = min(best.get(name, math.inf), seconds)
    return best


def cost_table(best: dict) -> None:
    base = best["Limiter(100)"]
    print(f"\n  the cost of sampling: amap(limit=100) over {COST_ITEMS:,} "
          "trivial items, the limiter at 100 tokens throughout")
    for name, seconds in best.items():
        print(f"  {name:38} {seconds * 1e9:6.0f} ns/item "
              f"{seconds / base:6.2f}x  (+{(seconds - base) * 1e9:.0f} ns)")
