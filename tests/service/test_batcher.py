"""The dynamic batcher, driven in-process over real ONNX Runtime sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from onnx_builders import (
    affine_config, affine_graph, fault_config, fault_graph, slow_config, slow_graph, write_model,
)
from service.core.batcher import BatchPolicy, BatchScheduler
from service.core.config import load_model_config
from service.core.runtime import OnnxModel, ProviderChoice, RuntimeOptions
from service.core.stats import VersionStats
from service.errors import InferenceFailed, ResourceExhausted
from service.metrics import Metrics

CPU = ProviderChoice("CPUExecutionProvider", "test")


def make_runtime(tmp_path: Path, name: str, graph, config: dict):
    model_dir = write_model(tmp_path, name, graph, config)
    parsed = load_model_config(model_dir / "config.yaml")
    runtime = OnnxModel(model_dir / "1" / "model.onnx", parsed, CPU, RuntimeOptions(1, 1))
    return parsed, runtime


def make_scheduler(parsed, runtime, metrics=None):
    metrics = metrics or Metrics()
    stats = VersionStats()
    return BatchScheduler("m", "1", parsed, runtime, metrics, stats), metrics, stats


def sample_value(metrics: Metrics, name: str) -> float:
    """The value of the one sample called `name` (this scheduler's model and version)."""
    return next(sample.value for family in metrics.registry.collect()
                for sample in family.samples if sample.name == name)


def histogram_count(metrics: Metrics, name: str, le: str) -> float:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name + "_bucket" and sample.labels["le"] == le:
                return sample.value
    raise KeyError(name)


def test_concurrent_requests_merge_and_match_unbatched(tmp_path):
    parsed, runtime = make_runtime(tmp_path, "affine", affine_graph(3.0, -1.0), affine_config())
    rng = np.random.default_rng(0)
    # Requests of 1..3 items with random data: reordering or mis-splitting would show.
    requests = [rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32)
                for _ in range(40)]

    async def scenario():
        scheduler, metrics, stats = make_scheduler(parsed, runtime)
        results = await asyncio.gather(
            *(scheduler.infer({"x": x}, len(x), None) for x in requests)
        )
        await scheduler.close()
        return results, metrics, stats

    results, metrics, stats = asyncio.run(scenario())
    for x, result in zip(requests, results):
        unbatched = runtime.run(0, {"x": x})[0]
        np.testing.assert_array_equal(result["y"], unbatched)
        np.testing.assert_allclose(result["y"], x * 3.0 - 1.0, rtol=1e-6)
    assert stats.inference_count == sum(len(x) for x in requests)
    assert stats.execution_count < len(requests), "no requests were merged"
    assert max(stats.by_batch_size) > 3
    assert max(stats.by_batch_size) <= parsed.max_batch_size
    total_runs = histogram_count(metrics, "inference_batch_size", "+Inf")
    assert total_runs == stats.execution_count


def test_queue_full_is_refused_at_once(tmp_path):
    parsed, runtime = make_runtime(tmp_path, "slow", slow_graph(), slow_config())
    busy = np.full((1, 1), 30000, np.int64)
    quick = np.zeros((1, 1), np.int64)
    x = np.ones((1, 512), np.float32)

    async def scenario():
        scheduler, _, _ = make_scheduler(parsed, runtime)
        running = asyncio.ensure_future(scheduler.infer({"x": x, "work": busy}, 1, None))
        await asyncio.sleep(0)  # let the worker take it: the queue is then empty again
        while scheduler.queued:
            await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(scheduler.infer({"x": x, "work": quick}, 1, None))
                   for _ in range(4)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match=r"queue is full \(4 requests waiting\)"):
            await scheduler.infer({"x": x, "work": quick}, 1, None)
        done = await asyncio.gather(running, *waiting)
        await scheduler.close()
        return done

    results = asyncio.run(scenario())
    assert all(np.array_equal(r["y"], x) for r in results)


def test_cancelled_requests_leave_the_queue_and_never_run(tmp_path):
    parsed, runtime = make_runtime(tmp_path, "slow", slow_graph(), slow_config())
    x = np.ones((1, 512), np.float32)

    async def scenario():
        scheduler, metrics, stats = make_scheduler(parsed, runtime)
        running = asyncio.ensure_future(
            scheduler.infer({"x": x, "work": np.full((1, 1), 20000, np.int64)}, 1, None)
        )
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(
            scheduler.infer({"x": x, "work": np.zeros((1, 1), np.int64)}, 1, None))
            for _ in range(4)]
        await asyncio.sleep(0)
        assert scheduler.queued == 4
        for future in queued:
            future.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        assert scheduler.queued == 0
        await running
        await scheduler.close()
        return metrics, stats

    metrics, stats = asyncio.run(scenario())
    assert stats.execution_count == 1  # only the first request ran
    dropped = metrics.registry.get_sample_value(
        "inference_requests_dropped_total", {"model": "m", "version": "1", "reason": "cancelled"}
    )
    assert dropped == 4
    assert metrics.registry.get_sample_value(
        "inference_queue_depth", {"model": "m", "version": "1"}) == 0


def test_failing_batch_fails_only_its_requests(tmp_path):
    parsed, runtime = make_runtime(tmp_path, "fault", fault_graph(), fault_config())

    async def scenario():
        scheduler, _, _ = make_scheduler(parsed, runtime)
        # One worker: the first request runs alone at once; the next three queue behind it and
        # are merged into one batch, which the marker value 99 makes fail inside ONNX Runtime.
        first = asyncio.ensure_future(scheduler.infer({"x": np.array([[1.0]], np.float32)}, 1, None))
        await asyncio.sleep(0)
        batch = [asyncio.ensure_future(scheduler.infer({"x": np.array([[v]], np.float32)}, 1, None))
                 for v in (2.0, 99.0, 3.0)]
        outcomes = await asyncio.gather(first, *batch, return_exceptions=True)
        after = await scheduler.infer({"x": np.array([[4.0]], np.float32)}, 1, None)
        await scheduler.close()
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert outcomes[0]["y"].tolist() == [[10.0]]
    assert all(isinstance(o, InferenceFailed) for o in outcomes[1:]), outcomes
    assert "inference failed for model 'm'" in outcomes[1].message
    assert after["y"].tolist() == [[40.0]]


def test_close_finishes_queued_requests(tmp_path):
    parsed, runtime = make_runtime(tmp_path, "affine", affine_graph(1.0, 1.0), affine_config())

    async def scenario():
        scheduler, _, _ = make_scheduler(parsed, runtime)
        pending = [asyncio.ensure_future(
            scheduler.infer({"x": np.full((1, 4), i, np.float32)}, 1, None)) for i in range(10)]
        await asyncio.sleep(0)
        await scheduler.close()
        return await asyncio.gather(*pending)

    results = asyncio.run(scenario())
    assert [r["y"][0, 0] for r in results] == [float(i + 1) for i in range(10)]


def test_requests_with_different_item_shapes_are_not_merged(tmp_path):
    config = affine_config(
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1]}],
    )
    parsed, runtime = make_runtime(tmp_path, "varwidth", affine_graph(2.0, 0.0, dim="n"), config)
    rng = np.random.default_rng(3)
    requests = [rng.standard_normal((1, int(rng.choice([3, 5, 7])))).astype(np.float32)
                for _ in range(30)]

    async def scenario():
        scheduler, _, stats = make_scheduler(parsed, runtime)
        results = await asyncio.gather(*(scheduler.infer({"x": x}, 1, None) for x in requests))
        await scheduler.close()
        return results, stats

    results, stats = asyncio.run(scenario())
    for x, result in zip(requests, results):
        np.testing.assert_array_equal(result["y"], x * 2.0)
    assert stats.execution_count < len(requests)  # same-width requests were still merged


def test_a_crash_forming_a_batch_fails_its_requests_and_the_queue_then_serves_on(tmp_path,
                                                                                   caplog):
    """A fault in the batcher itself (here: requests whose item shapes cannot be concatenated,
    which the core's validation would have refused) must fail every caller it touched, not hang
    them, and the worker must go on serving."""
    parsed, runtime = make_runtime(tmp_path, "slow", slow_graph(), slow_config())
    work = np.zeros((1, 1), np.int64)

    async def scenario():
        scheduler, _, _ = make_scheduler(parsed, runtime)
        busy = asyncio.ensure_future(scheduler.infer(
            {"x": np.ones((1, 512), np.float32), "work": np.full((1, 1), 20000, np.int64)},
            1, None))
        await asyncio.sleep(0)
        while scheduler.queued:  # the worker has taken the busy request: the rest queue behind
            await asyncio.sleep(0)
        queued = [asyncio.ensure_future(scheduler.infer({"x": np.ones((1, width), np.float32),
                                                         "work": work}, 1, None))
                  for width in (512, 511, 512)]
        outcomes = await asyncio.gather(busy, *queued, return_exceptions=True)
        after = await scheduler.infer({"x": np.full((1, 512), 2.0, np.float32), "work": work},
                                      1, None)
        await scheduler.close()
        return outcomes, after

    (busy, *crashed), after = asyncio.run(scenario())
    assert "batcher for model 'm' crashed; failing queued requests" in caplog.messages
    assert np.array_equal(busy["y"], np.ones((1, 512), np.float32))
    assert [type(outcome) for outcome in crashed] == [InferenceFailed] * 3
    assert all(str(o) == "inference failed for model 'm'; the server log has details"
               for o in crashed)
    assert np.array_equal(after["y"], np.full((1, 512), 2.0, np.float32))


def test_callers_all_queued_do_not_wait_out_the_delay(tmp_path):
    # Three closed-loop callers and a 10 s delay: whenever the instance frees, every caller is
    # already queued, so nothing more can come and waiting would only idle the instance. (Before
    # the rule, every batch of two or three waited the full 10 s.)
    config = affine_config(dynamic_batching={"max_queue_delay_us": 10_000_000,
                                             "preferred_batch_sizes": [8]})
    parsed, runtime = make_runtime(tmp_path, "affine", affine_graph(2.0, 0.0), config)
    rng = np.random.default_rng(4)

    async def caller(scheduler, rounds):
        for _ in range(rounds):
            x = rng.standard_normal((1, 4)).astype(np.float32)
            result = await scheduler.infer({"x": x}, 1, None)
            np.testing.assert_array_equal(result["y"], x * 2.0)

    async def scenario():
        scheduler, metrics, stats = make_scheduler(parsed, runtime)
        async with asyncio.timeout(20):
            await asyncio.gather(*(caller(scheduler, 30) for _ in range(3)))
        await scheduler.close()
        return metrics, stats

    metrics, stats = asyncio.run(scenario())
    assert stats.inference_count == 90
    assert stats.execution_count < 90  # callers that queued together still ran together
    assert sample_value(metrics, "inference_batch_waits_total") == 0
    assert sample_value(metrics, "inference_batch_wait_seconds_total") == 0


def slow_requests(n: int, work: int = 0) -> list[dict]:
    return [{"x": np.full((1, 512), i, np.float32), "work": np.full((1, 1), work, np.int64)}
            for i in range(n)]


class FixedCost:
    """A batch cost that stays what the test says, whatever the real runs take (the busy request
    below would otherwise teach the policy a cost of its own)."""

    def __init__(self, fixed_s: float):
        self.fixed_s = fixed_s

    def add(self, items: int, seconds: float) -> None:
        pass


def policy_with_fixed_cost(fixed_s: float) -> BatchPolicy:
    """A policy whose batches cost `fixed_s` each, on a clock that never moves: the arrival rate
    is then the items seen over its horizon (30/s for 3 items), so it waits when fixed_s > 0."""
    policy = BatchPolicy(clock=lambda: 0.0)
    policy.cost = FixedCost(fixed_s)
    return policy


@pytest.mark.parametrize("fixed_s, batches", [(1.0, [1, 4]), (0.0, [1, 2, 2])])
def test_queued_requests_wait_for_company_only_when_it_pays(tmp_path, fixed_s, batches):
    config = slow_config(dynamic_batching={"max_queue_delay_us": 10_000_000,
                                           "preferred_batch_sizes": [4], "max_queue_size": 8})
    parsed, runtime = make_runtime(tmp_path, "slow", slow_graph(), config)

    metrics = Metrics()

    async def scenario():
        scheduler = BatchScheduler("m", "1", parsed, runtime, metrics, stats := VersionStats(),
                                   policy_with_fixed_cost(fixed_s))
        busy = asyncio.ensure_future(scheduler.infer(slow_requests(1, work=20000)[0], 1, None))
        await asyncio.sleep(0)  # the instance takes it
        first = [asyncio.ensure_future(scheduler.infer(r, 1, None)) for r in slow_requests(2)]
        await busy
        while scheduler.queued:  # the worker takes the two queued ones in hand
            await asyncio.sleep(0)
        second = [asyncio.ensure_future(scheduler.infer(r, 1, None)) for r in slow_requests(2)]
        async with asyncio.timeout(20):
            results = await asyncio.gather(*first, *second)
        await scheduler.close()
        return results, stats

    results, stats = asyncio.run(scenario())
    # The metric says which: one batch waited (for the second two), or none did.
    assert sample_value(metrics, "inference_batch_waits_total") == (1 if fixed_s else 0)
    assert (sample_value(metrics, "inference_batch_wait_seconds_total") > 0) == bool(fixed_s)
    assert [r["y"][0, 0] for r in results] == [0.0, 1.0, 0.0, 1.0]
    # Waiting pays: the two in hand wait for the next two and all four run as one batch (the
    # target). It does not: the two run at once, and so do the next two.
    assert sorted(size for size, d in stats.by_batch_size.items()
                  for _ in range(d.compute_infer.count)) == batches


def test_waiting_that_pays_still_ends_at_the_delay(tmp_path):
    config = slow_config(dynamic_batching={"max_queue_delay_us": 50_000, "max_queue_size": 8})
    parsed, runtime = make_runtime(tmp_path, "slow", slow_graph(), config)
    metrics = Metrics()

    async def scenario():
        scheduler = BatchScheduler("m", "1", parsed, runtime, metrics, stats := VersionStats(),
                                   policy_with_fixed_cost(1.0))
        # Two queued together on an idle instance: waiting would pay, but nobody else comes, so
        # the two wait until 50 ms after the first queued, then run (a timeout here would mean
        # they waited for ever).
        pending = [asyncio.ensure_future(scheduler.infer(r, 1, None)) for r in slow_requests(2)]
        async with asyncio.timeout(20):
            await asyncio.gather(*pending)
        await scheduler.close()
        return stats

    stats = asyncio.run(scenario())
    assert stats.execution_count == 1 and stats.by_batch_size[2].compute_infer.count == 1
    assert sample_value(metrics, "inference_batch_waits_total") == 1
    # It waited out the delay (it ends only when the delay runs out, never sooner: a slow host
    # can only make the figure larger, and the timeout above bounds it).
    assert sample_value(metrics, "inference_batch_wait_seconds_total") >= 0.045
