"""The batcher's rule for waiting, on a fake clock: when an instance with a few queued items in
hand waits for more (service/core/batcher.py's docstring derives it)."""

from __future__ import annotations

import pytest

from service.core.batcher import ArrivalRate, BatchCost, BatchPolicy


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def trained(clock: FakeClock, fixed_s: float, per_item_s: float) -> BatchPolicy:
    """A policy that has seen batches of 1 to 8 items cost fixed_s + per_item_s * n."""
    policy = BatchPolicy(clock)
    for n in range(1, 9):
        policy.cost.add(n, fixed_s + per_item_s * n)
    return policy


def arrive(policy: BatchPolicy, clock: FakeClock, per_s: float, seconds: float, items: int = 1):
    """Requests of `items` items, evenly spaced, `per_s` items a second for `seconds`."""
    for _ in range(int(per_s * seconds / items)):
        clock.advance(items / per_s)
        policy.arrivals.add(items)


def test_arrival_rate_follows_a_steady_stream_and_decays_when_it_stops():
    clock = FakeClock()
    rate = ArrivalRate(clock, horizon_s=0.1)
    assert rate.per_s() == 0.0
    for _ in range(2000):  # 4000 items/s for half a second
        clock.advance(0.00025)
        rate.add(1)
    assert rate.per_s() == pytest.approx(4000, rel=0.01)
    clock.advance(0.1)  # one horizon of silence: e^-1 of it is left
    assert rate.per_s() == pytest.approx(4000 / 2.718281828, rel=0.01)
    clock.advance(1.0)
    assert rate.per_s() < 1


def test_batch_cost_separates_the_fixed_part_from_the_part_per_item():
    cost = BatchCost()
    for n in (1, 4, 2, 8, 3, 16):
        cost.add(n, 0.002 + 0.0001 * n)
    assert cost.fixed_s == pytest.approx(0.002)


def test_batch_cost_knows_no_fixed_part_from_batches_of_one_size():
    cost = BatchCost()
    assert cost.fixed_s == 0.0
    for _ in range(50):
        cost.add(1, 0.003)
    assert cost.fixed_s == 0.0


def test_batch_cost_keeps_its_fixed_part_within_the_mean_cost_when_noise_tilts_the_line():
    cost = BatchCost(forget=1.0)  # plain least squares: the mean below is unweighted
    for n, seconds in ((1, 0.004), (2, 0.003), (4, 0.001)):  # bigger batches faster: noise
        cost.add(n, seconds)
    assert cost.fixed_s == pytest.approx((0.004 + 0.003 + 0.001) / 3)
    rising = BatchCost(forget=1.0)
    for n, seconds in ((1, 0.001), (8, 0.010), (16, 0.030)):  # intercept below zero
        rising.add(n, seconds)
    assert rising.fixed_s == 0.0


def test_no_evidence_no_waiting():
    clock = FakeClock()
    policy = BatchPolicy(clock)
    assert not policy.worth_waiting(2)  # no batches seen, no arrivals
    arrive(policy, clock, per_s=10_000, seconds=0.1)
    assert not policy.worth_waiting(2)  # arrivals, but no cost fit yet


def test_cpu_like_costs_never_wait():
    # The CNN on one core: about 50 us per batch and 200 us per item, 5000 items/s at most.
    clock = FakeClock()
    policy = trained(clock, fixed_s=50e-6, per_item_s=200e-6)
    arrive(policy, clock, per_s=5000, seconds=0.3)
    assert not policy.worth_waiting(2)


def test_large_fixed_cost_waits_until_the_batch_holds_what_arrives_during_it():
    # A GPU-like model: 2 ms per batch whatever its size, 50 us per item; 4000 items/s arrive,
    # 8 of them during one fixed part.
    clock = FakeClock()
    policy = trained(clock, fixed_s=0.002, per_item_s=50e-6)
    arrive(policy, clock, per_s=4000, seconds=0.5)
    assert [policy.worth_waiting(n) for n in (2, 7, 8, 9)] == [True, True, False, False]


def test_closed_loop_clients_all_queued_never_wait():
    # Four clients, each sending its next request 200 us after its last answer, against the same
    # GPU-like costs: every cycle is one batch of 4 (2.2 ms) plus the 200 us, 4 items per 2.4 ms.
    clock = FakeClock()
    policy = trained(clock, fixed_s=0.002, per_item_s=50e-6)
    for _ in range(200):
        clock.advance(0.0024)
        for _ in range(4):
            policy.arrivals.add(1)
    assert not policy.worth_waiting(4)  # all four are queued: no one else can send
    assert policy.worth_waiting(2)      # two are queued, two are on their way


def test_waiting_stops_when_arrivals_stop():
    clock = FakeClock()
    policy = trained(clock, fixed_s=0.002, per_item_s=50e-6)
    arrive(policy, clock, per_s=4000, seconds=0.5)
    assert policy.worth_waiting(4)
    clock.advance(0.5)
    assert not policy.worth_waiting(4)
