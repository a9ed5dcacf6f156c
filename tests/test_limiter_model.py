"""A stateful hypothesis test of Limiter against a counting model: a total,
a number borrowed and a FIFO line of waiting tasks, each for n tokens (the
first that does not fit holds back those behind it). Any sequence of
acquire_nowait(n), acquire(n) by new tasks, release(n), cancellation of a
waiting task and total_tokens changes must leave the limiter where the
model says, on both implementations and both loops."""

from __future__ import annotations

import asyncio
import collections
import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant,
                                 precondition, rule,
                                 run_state_machine_as_test)

from conftest import new_loop
from taskbound import WouldBlock


def machine_for(impl, loop_kind):
    class LimiterMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = new_loop(loop_kind)
            self.handler_calls: list = []
            self.loop.set_exception_handler(
                lambda loop, context: self.handler_calls.append(context))
            self.limiter = impl.LimiterType(2)
            self.total = 2
            self.borrowed = 0
            self.line: collections.deque = collections.deque()
            self.wants: dict = {}       # task id -> the tokens it waits for
            self.tasks: dict = {}
            self.next_id = 0

        def settle(self) -> None:
            for _ in range(4):
                self.loop.run_until_complete(asyncio.sleep(0))

        def fits(self, n: int) -> bool:
            return self.borrowed + n <= self.total

        def never_fits(self, n: int) -> bool:
            return 0 < self.total < n

        def hand_on(self) -> None:
            while self.line and self.fits(self.wants[self.line[0]]):
                self.borrowed += self.wants[self.line.popleft()]

        @rule(n=st.integers(1, 3))
        def acquire_nowait(self, n):
            async def attempt():
                self.limiter.acquire_nowait(n)
            if self.never_fits(n):
                with pytest.raises(ValueError):
                    self.loop.run_until_complete(attempt())
            elif self.fits(n) and not self.line:
                self.loop.run_until_complete(attempt())
                self.borrowed += n
            else:
                with pytest.raises(WouldBlock):
                    self.loop.run_until_complete(attempt())

        @rule(n=st.integers(1, 3))
        def acquire_in_a_task(self, n):
            if self.never_fits(n):
                with pytest.raises(ValueError):
                    self.loop.run_until_complete(self.limiter.acquire(n))
                return
            task_id = self.next_id
            self.next_id += 1
            self.wants[task_id] = n
            self.tasks[task_id] = self.loop.create_task(
                self.limiter.acquire(n))
            if self.fits(n) and not self.line:
                self.borrowed += n
            else:
                self.line.append(task_id)
            self.settle()

        @rule(n=st.integers(1, 3))
        def release(self, n):
            if self.borrowed < n:
                with pytest.raises(RuntimeError):
                    self.limiter.release(n)
                return
            self.limiter.release(n)
            self.borrowed -= n
            self.hand_on()
            self.settle()

        @precondition(lambda self: bool(self.line))
        @rule(data=st.data())
        def cancel_a_waiter(self, data):
            task_id = data.draw(st.sampled_from(list(self.line)))
            self.tasks[task_id].cancel()
            self.line.remove(task_id)
            self.hand_on()      # it may have held back those behind it
            self.settle()
            assert self.tasks[task_id].cancelled()

        @rule(total=st.one_of(st.integers(1, 5), st.just(math.inf)))
        def set_total(self, total):
            self.limiter.total_tokens = total
            self.total = total
            self.hand_on()
            self.settle()

        @invariant()
        def agrees_with_the_model(self):
            limiter = self.limiter
            assert limiter.total_tokens == self.total
            assert limiter.borrowed_tokens == self.borrowed
            expected = (math.inf if self.total == math.inf
                        else max(0, self.total - self.borrowed))
            assert limiter.available_tokens == expected
            assert limiter.statistics().waiting == len(self.line)
            assert limiter.locked() == (not self.fits(1) or bool(self.line))
            for task_id, task in self.tasks.items():
                assert task.done() == (task_id not in self.line)
            assert self.handler_calls == []

        def teardown(self):
            for task_id in list(self.line):
                self.tasks[task_id].cancel()
            self.line.clear()
            self.settle()
            while self.limiter.borrowed_tokens:
                self.limiter.release()
            self.loop.close()

    return LimiterMachine


def test_limiter_follows_the_counting_model(impl, run):
    run_state_machine_as_test(
        machine_for(impl, run.loop_kind),
        settings=settings(max_examples=40, stateful_step_count=30,
                          deadline=None, derandomize=True))
