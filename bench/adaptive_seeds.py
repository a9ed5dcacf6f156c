"""The adaptive simulation's targets over many seeds, not only the bench's
one: for each of taskbound's algorithms, per seed and scenario, goodput and
p99 over that seed's best fixed limit, and the round trips to come back
within 10% of a capacity that halved. Then, per algorithm, how many seeds
meet each target and the worst figure.

Usage: python bench/adaptive_seeds.py [--seeds N] [--jobs N]

Seeds are the bench's own, then 1 to N - 1. The same simulation as
`python -m taskbound bench adaptive` (python/taskbound/_benchadaptive.py),
on the C core; about 2 s of CPU per seed and contender.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing

import taskbound
from taskbound import _benchadaptive as sim


def contenders() -> dict:
    """The fixed limits and taskbound's algorithms, by name."""
    runs = {f"fixed {n}": sim.fixed(n) for n in sim.FIXED}
    runs.update(sim.adaptive_contenders(taskbound))
    return runs


def one_seed(seed: int) -> tuple[int, dict]:
    """{scenario: {contender: Run}} for one seed, "best fixed" included."""
    sim.SEED = seed
    figures = {}
    for scenario in sim.SCENARIOS:
        runs = {name: sim.simulate(taskbound, drive, scenario)
                for name, drive in contenders().items()}
        runs["best fixed"] = runs[sim.best_fixed(runs)]
        figures[scenario.name] = runs
    return seed, figures


def report(results: list) -> None:
    """Per algorithm and seed its figures; then, per target of the bench's
    (`sim.targets`, the one place they are written), the seeds that meet
    it and the worst figure."""
    algorithms = [name for name in contenders() if not
                  name.startswith("fixed")]
    short = dict(zip((s.name for s in sim.SCENARIOS),
                     ("steady", "halves", "doubles", "noise")))
    halved_check = "after capacity halves"
    for name in algorithms:
        print(f"\n{name}: goodput / p99 over the seed's best fixed limit; "
              "round trips back within 10% after capacity halves")
        print("  seed      " + "  ".join(f"{short[s.name]:>11}"
                                         for s in sim.SCENARIOS)
              + "  re-conv.")
        worst_goodput = {s.name: math.inf for s in sim.SCENARIOS}
        worst_p99 = {s.name: 0.0 for s in sim.SCENARIOS}
        met = {s.name: 0 for s in sim.SCENARIOS}
        back = 0
        for seed, figures in results:
            checks = sim.targets(figures, name)
            cells = []
            for scenario in figures:
                mine = [(what, figure, passed)
                        for what, _, figure, passed in checks
                        if what.startswith(scenario + ":")]
                goodput = next(f for w, f, _ in mine if "goodput" in w)
                p99 = next(f for w, f, _ in mine if "p99" in w)
                worst_goodput[scenario] = min(worst_goodput[scenario],
                                              goodput)
                worst_p99[scenario] = max(worst_p99[scenario], p99)
                met[scenario] += all(passed for _, _, passed in mine)
                cells.append(f"{goodput:5.2f}/{p99:4.2f}")
            back += next(passed for what, _, _, passed in checks
                         if what.startswith(halved_check))
            halved = figures["capacity halves"][name].reconverge
            shown = "never" if halved is None else f"{halved:.0f}"
            print(f"  {seed:<9} " + "  ".join(f"{c:>11}" for c in cells)
                  + f"  {shown:>8}")
        seeds = len(results)
        for scenario in worst_goodput:
            print(f"  {scenario}: its goodput, p99 and error targets met "
                  f"on {met[scenario]} of {seeds} seeds; worst goodput "
                  f"{worst_goodput[scenario]:.2f}, worst p99 "
                  f"{worst_p99[scenario]:.2f}")
        print(f"  back within 10% of a halved capacity in time on {back} "
              f"of {seeds} seeds")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=21)
    parser.add_argument("--jobs", type=int,
                        default=multiprocessing.cpu_count())
    args = parser.parse_args()
    seeds = [sim.SEED] + list(range(1, args.seeds))
    with multiprocessing.Pool(args.jobs) as pool:
        results = pool.map(one_seed, seeds)
    report(results)


if __name__ == "__main__":
    main()
