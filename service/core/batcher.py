"""Per-model-version dynamic batching scheduler.

Requests (each possibly a batch itself) wait in a bounded queue as (inputs, future) entries. One
worker per model instance forms a batch and runs it on its own ONNX Runtime session in a thread,
then splits the outputs back to the requests' futures in order.

Batch formation, per worker:
- take the oldest request and everything already queued behind it, up to max_batch_size;
- a lone request (nothing else queued) runs at once: waiting for company that may never come would
  only add latency;
- otherwise, while the batch is below its target (the largest preferred batch size, else
  max_batch_size), wait for more until max_queue_delay has passed since the oldest request was
  queued. The wait shrinks as the batch fills because it is measured from that fixed point.

A full queue answers RESOURCE_EXHAUSTED at once. A request whose call is cancelled or whose deadline
passes while queued is removed from the queue immediately (its future's done-callback does it), so
it never reaches compute and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.core.config import ModelConfig
from service.core.runtime import OnnxModel
from service.core.stats import VersionStats
from service.errors import DeadlineExceeded, InferenceFailed, ResourceExhausted, Unavailable
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Queued:
    inputs: dict[str, np.ndarray]
    batch_size: int
    future: asyncio.Future
    enqueued: float
    deadline: float | None


class BatchScheduler:
    def __init__(
        self,
        model: str,
        version: str,
        config: ModelConfig,
        runtime: OnnxModel,
        metrics: Metrics,
        stats: VersionStats,
    ):
        self._model = model
        self._version = version
        self._runtime = runtime
        self._metrics = metrics
        self._stats = stats
        self._batched = config.batching_enabled
        self._has_batch_axis = config.max_batch_size > 0
        self._max_batch = max(config.max_batch_size, 1)
        preferred = config.dynamic_batching.preferred_batch_sizes
        self._target = max(preferred) if preferred else self._max_batch
        self._delay = config.dynamic_batching.max_queue_delay_us / 1e6
        self._max_queue = config.dynamic_batching.max_queue_size
        # Requests can only be concatenated when they carry the same inputs with the same per-item
        # shapes, which is only in doubt for variable dims (e.g. images of any height and width)
        # and optional inputs.
        self._shapes_vary = any(-1 in spec.graph_shape or spec.optional for spec in config.inputs)
        self._output_names = runtime.output_names
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(
            max_workers=config.instance_count, thread_name_prefix=f"ort-{model}-{version}"
        )
        self._workers = [
            asyncio.get_running_loop().create_task(self._work(i), name=f"batcher-{model}-{i}")
            for i in range(config.instance_count)
        ]
        self._queue_depth = metrics.queue_depth.labels(model, version)
        metrics.queue_capacity.labels(model, version).set(self._max_queue)
        self._queue_latency = metrics.queue_latency.labels(model, version)
        self._compute_latency = metrics.compute_latency.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)

    async def infer(
        self, inputs: dict[str, np.ndarray], batch_size: int, deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs (all of the model's outputs, by name)."""
        if self._closing:
            raise Unavailable(f"model '{self._model}' version {self._version} is being unloaded")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"deadline passed before model '{self._model}' was reached")
        if len(self._queue) >= self._max_queue:
            raise ResourceExhausted(
                f"model '{self._model}' version {self._version}: queue is full "
                f"({self._max_queue} requests waiting); retry with backoff"
            )
        future = asyncio.get_running_loop().create_future()
        entry = _Queued(inputs, batch_size, future, now, deadline)
        future.add_done_callback(lambda f, e=entry: self._on_done_early(f, e))
        self._queue.append(entry)
        self._queue_depth.inc()
        self._wakeup.set()
        return await future

    def _on_done_early(self, future: asyncio.Future, entry: _Queued) -> None:
        # Only cancellation completes a future that is still queued: remove it right away.
        if not future.cancelled():
            return
        try:
            self._queue.remove(entry)
        except ValueError:
            return  # already taken into a batch; the worker skips it
        self._queue_depth.dec()
        # gRPC cancels an expired call from its own timer; allow for that timer firing a little
        # before our clock reaches the deadline we computed from time_remaining().
        expired = entry.deadline is not None and time.monotonic() >= entry.deadline - 0.05
        self._metrics.dropped.labels(
            self._model, self._version, "deadline" if expired else "cancelled"
        ).inc()

    async def close(self) -> None:
        """Stop taking requests, finish the queued ones, then stop the workers."""
        self._closing = True
        self._wakeup.set()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- worker side -------------------------------------------------------------------------

    def _fits(self, batch: list[_Queued], size: int, entry: _Queued) -> bool:
        if size + entry.batch_size > self._max_batch:
            return False
        if self._shapes_vary and batch:
            first = batch[0].inputs
            return first.keys() == entry.inputs.keys() and all(
                first[n].shape[1:] == entry.inputs[n].shape[1:] for n in first
            )
        return True

    def _take(self, batch: list[_Queued], size: int) -> int:
        """Move queued requests into `batch` while they fit; return the new item count."""
        while self._queue and self._fits(batch, size, self._queue[0]):
            entry = self._queue.popleft()
            self._queue_depth.dec()
            batch.append(entry)
            size += entry.batch_size
        return size

    async def _next_batch(self) -> list[_Queued] | None:
        while not self._queue:
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        batch: list[_Queued] = []
        if not self._batched:
            entry = self._queue.popleft()
            self._queue_depth.dec()
            return [entry]
        lone = len(self._queue) == 1
        size = self._take(batch, 0)
        if lone or not batch:
            return batch
        oldest = batch[0].enqueued
        while size < self._target and not self._closing:
            if self._queue and not self._fits(batch, size, self._queue[0]):
                break  # the next request cannot join: run what we have
            remaining = oldest + self._delay - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                pass
            size = self._take(batch, size)
        return batch

    async def _work(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                batch = await self._next_batch()
                if batch is None:
                    return
                await self._execute(loop, instance, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not hang every caller: fail them and go on
                log.exception("batcher for model '%s' crashed; failing queued requests", self._model)
                self._fail_all_queued()

    def _fail_all_queued(self) -> None:
        error = InferenceFailed(self._model)
        while self._queue:
            entry = self._queue.popleft()
            self._queue_depth.dec()
            if not entry.future.done():
                entry.future.set_exception(error)

    async def _execute(self, loop, instance: int, batch: list[_Queued]) -> None:
        live = [entry for entry in batch if not entry.future.done()]
        if not live:
            return
        started = time.monotonic()
        for entry in live:
            self._queue_latency.observe(started - entry.enqueued)
            self._stats.queue.add(started - entry.enqueued)

        t0 = time.perf_counter()
        if len(live) == 1:
            inputs = live[0].inputs
        else:
            inputs = {
                name: np.concatenate([entry.inputs[name] for entry in live])
                for name in live[0].inputs
            }
        total = sum(entry.batch_size for entry in live)
        t1 = time.perf_counter()
        try:
            outputs, infer_s = await loop.run_in_executor(
                self._executor, self._runtime.timed_run, instance, inputs)
            if self._has_batch_axis and any(out.shape[:1] != (total,) for out in outputs):
                raise RuntimeError(
                    f"outputs' batch dims {[o.shape[:1] for o in outputs]} != batch size {total}"
                )
        except Exception:
            log.exception(
                "inference failed: model=%s version=%s batch=%d requests=%d",
                self._model, self._version, total, len(live),
            )
            error = InferenceFailed(self._model)
            for entry in live:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return

        offset = 0
        for entry in live:
            if len(live) == 1:
                result = outputs
            else:
                result = [out[offset:offset + entry.batch_size] for out in outputs]
            offset += entry.batch_size
            if not entry.future.done():
                entry.future.set_result(dict(zip(self._output_names, result)))
        t3 = time.perf_counter()

        # Compute is ONNX Runtime's own time, timed in the worker thread; the hop to and from
        # that thread (t2 - t1 - infer_s) is serving cost and counted as output time.
        self._compute_latency.observe(infer_s)
        self._batch_size.observe(total)
        self._stats.record_execution(total, len(live), t1 - t0, infer_s, t3 - t1 - infer_s)
