"""Per-model-version dynamic batching scheduler.

Requests (each possibly a batch itself) wait in a bounded queue as (inputs, future) entries. One
worker per model instance forms a batch and hands it to that instance's own thread, which runs it on
the instance's ONNX Runtime session (releasing the GIL) and hands the outputs back with a single
`call_soon_threadsafe`; that callback splits them to the requests' futures in order. A dedicated
thread and one callback per batch cost less than an executor's futures chained into asyncio ones,
which matters when a batch computes in a fraction of a millisecond.

Batch formation, per worker, whenever its instance is free:
- take the oldest request and everything already queued behind it, up to max_batch_size;
- a lone request (nothing else queued) runs at once: waiting for company that may never come would
  only add latency;
- otherwise wait for more only while waiting pays, and never beyond max_queue_delay since the
  oldest request was queued (nor once the batch reaches its target: the largest preferred batch
  size, else max_batch_size).

When waiting pays. Every batch costs the instance a fixed part and a part per item, t(n) = a + b*n
(`BatchCost` fits both to the batches this scheduler ran). Running the n queued items now costs
t(n)/n per item; waiting w while requests arrive at rate r costs (w + t(n + r*w)) / (n + r*w) per
item, which is less exactly when n < a*r, whatever w. So the instance waits only while fewer items
are queued than arrive during one fixed part, re-deciding at every arrival (`BatchPolicy`): batches
grow to about a*r items where the fixed part dominates (a GPU); on this 2-core host's CPU a*r
stayed below 2 (fashion_cnn under perf_analyzer, 3 to 32 clients: median 0.5, at most 1.6), so
batches form while the instance computes instead. Without a fit (every batch so far of one size)
it does not wait. Nor does it when closed-loop clients are all queued, the case where waiting is
pure loss because no one else can send (and where a plain "wait for the delay" rule made 3
clients slower than 1): c clients cycling through requests that each take longer than a arrive at
a rate r < c/a, so a*r < c = n.

A full queue answers RESOURCE_EXHAUSTED at once. A request whose call is cancelled or whose deadline
passes while queued is removed from the queue immediately (its future's done-callback does it), so
it never reaches compute and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
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


class ArrivalRate:
    """Items arriving per second over roughly the last `horizon_s`: an exponentially decaying
    count of arrivals, read at `clock()`."""

    def __init__(self, clock: Callable[[], float], horizon_s: float = 0.1):
        self._clock = clock
        self._horizon = horizon_s
        self._count = 0.0
        self._last = clock()

    def _decayed(self, now: float) -> float:
        return self._count * math.exp(-(now - self._last) / self._horizon)

    def add(self, items: int) -> None:
        now = self._clock()
        self._count = self._decayed(now) + items
        self._last = now

    def per_s(self) -> float:
        return self._decayed(self._clock()) / self._horizon


class BatchCost:
    """t(n) = fixed + per_item * n, the time a batch of n items holds the instance, fitted by
    least squares to recent batches (each older one weighs `forget` times less)."""

    def __init__(self, forget: float = 0.98):
        self._forget = forget
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def add(self, items: int, seconds: float) -> None:
        k = self._forget
        self._w = k * self._w + 1
        self._n = k * self._n + items
        self._t = k * self._t + seconds
        self._nn = k * self._nn + items * items
        self._nt = k * self._nt + items * seconds

    @property
    def fixed_s(self) -> float:
        """The fixed part; 0 until batches of different sizes have been seen."""
        if not self._w:
            return 0.0
        mean_n, mean_t = self._n / self._w, self._t / self._w
        spread = self._nn / self._w - mean_n * mean_n
        if spread < 0.25:  # (nearly) one batch size: the fixed part cannot be told apart
            return 0.0
        per_item = (self._nt / self._w - mean_n * mean_t) / spread
        # Noise can tilt the line: the fixed part is between nothing and the whole mean cost.
        return min(max(mean_t - per_item * mean_n, 0.0), mean_t)


class BatchPolicy:
    """Whether an instance with `queued` items in hand should wait for more (module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.arrivals = ArrivalRate(clock)
        self.cost = BatchCost()

    def worth_waiting(self, queued: int) -> bool:
        return queued < self.cost.fixed_s * self.arrivals.per_s()


class _InstanceThread:
    """The thread that runs one instance's batches, in order."""

    def __init__(self, runtime: OnnxModel, instance: int, name: str):
        self._runtime = runtime
        self._instance = instance
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, inputs: dict[str, np.ndarray], done: Callable) -> None:
        """Run `inputs`; then, on the event loop, done((outputs, infer_s), None) or
        done(None, exception)."""
        self._jobs.put((self._runtime.timed_run, (self._instance, inputs), done))

    def call(self, function: Callable, done: Callable) -> None:
        """Call function(instance) on this thread; then, on the loop, done(result, error)."""
        self._jobs.put((function, (self._instance,), done))

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, args, done = job
            try:
                outcome = (function(*args), None)
            except Exception as exc:  # noqa: BLE001 - reported to the batch's callers
                outcome = (None, exc)
            try:
                self._loop.call_soon_threadsafe(done, *outcome)
            except RuntimeError:  # the loop is closed: the process is exiting
                return
            # Let go of this job's inputs now, not when the next job comes: they may be views of
            # a client's shared memory, which stays mapped while anything refers to it.
            del job, function, args, done, outcome

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


class BatchScheduler:
    def __init__(
        self,
        model: str,
        version: str,
        config: ModelConfig,
        runtime: OnnxModel,
        metrics: Metrics,
        stats: VersionStats,
        policy: BatchPolicy | None = None,
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
        self._policy = policy or BatchPolicy()
        # Requests can only be concatenated when they carry the same inputs with the same per-item
        # shapes, which is only in doubt for variable dims (e.g. images of any height and width)
        # and optional inputs.
        self._shapes_vary = any(-1 in spec.graph_shape or spec.optional for spec in config.inputs)
        self._output_names = runtime.output_names
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._threads = [_InstanceThread(runtime, i, f"ort-{model}-{version}-{i}")
                         for i in range(config.instance_count)]
        self._workers = [
            asyncio.get_running_loop().create_task(self._work(i), name=f"batcher-{model}-{i}")
            for i in range(config.instance_count)
        ]
        self._queue_depth = metrics.queue_depth.labels(model, version)
        metrics.queue_capacity.labels(model, version).set(self._max_queue)
        self._queue_latency = metrics.queue_latency.labels(model, version)
        self._compute_latency = metrics.compute_latency.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._batch_waits = metrics.batch_waits.labels(model, version)
        self._batch_wait_seconds = metrics.batch_wait_seconds.labels(model, version)

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
        self._policy.arrivals.add(batch_size)
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

    async def warm_up(self) -> None:
        """Warm every instance up on its own serving thread (see OnnxModel.warm_up), one
        instance after the other; raises the first failure."""
        loop = asyncio.get_running_loop()
        for thread in self._threads:
            finished = loop.create_future()

            def done(_, error: Exception | None, finished=finished) -> None:
                if error is None:
                    finished.set_result(None)
                else:
                    finished.set_exception(error)

            thread.call(self._runtime.warm_up, done)
            await finished

    async def close(self) -> None:
        """Stop taking requests, finish the queued ones, then stop the workers."""
        self._closing = True
        self._wakeup.set()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for thread in self._threads:
            await asyncio.to_thread(thread.stop)

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
        waited_since = None
        while size < self._target and not self._closing:
            if self._queue and not self._fits(batch, size, self._queue[0]):
                break  # the next request cannot join: run what we have
            if not self._policy.worth_waiting(size):
                break
            now = time.monotonic()
            remaining = oldest + self._delay - now
            if remaining <= 0:
                break
            if waited_since is None:
                waited_since = now
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                pass
            size = self._take(batch, size)
        if waited_since is not None:
            self._batch_waits.inc()
            self._batch_wait_seconds.inc(time.monotonic() - waited_since)
        return batch

    async def _work(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch: list[_Queued] = []
            try:
                batch = await self._next_batch()
                if batch is None:
                    return
                finished = loop.create_future()
                self._execute(instance, batch, finished)
                await finished
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not hang every caller: fail them and go on
                log.exception("batcher for model '%s' crashed; failing queued requests", self._model)
                self._fail_all(batch)

    def _fail_all(self, batch: list[_Queued]) -> None:
        """Fail `batch` and everything queued."""
        error = InferenceFailed(self._model)
        while self._queue:
            batch.append(self._queue.popleft())
            self._queue_depth.dec()
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(error)

    def _execute(self, instance: int, batch: list[_Queued], finished: asyncio.Future) -> None:
        """Start `batch` on the instance's thread; `finished` resolves once every request in it
        has its outputs (or its error)."""
        live = [entry for entry in batch if not entry.future.done()]
        if not live:
            finished.set_result(None)
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

        def done(result, error: Exception | None) -> None:
            outputs, infer_s = result if error is None else (None, 0.0)
            try:
                self._deliver(live, total, outputs, error)
            finally:
                if not finished.done():  # not when the worker was cancelled meanwhile
                    finished.set_result(None)
            # Compute is ONNX Runtime's own time, timed in the instance thread; the hop to and
            # from that thread is serving cost and counted as output time.
            if error is None:
                self._policy.cost.add(total, time.perf_counter() - t0)
                self._compute_latency.observe(infer_s)
                self._batch_size.observe(total)
                self._stats.record_execution(total, len(live), t1 - t0, infer_s,
                                             time.perf_counter() - t1 - infer_s)

        self._threads[instance].submit(inputs, done)

    def _deliver(self, live: list[_Queued], total: int, outputs, error: Exception | None) -> None:
        if error is None and self._has_batch_axis and any(
                out.shape[:1] != (total,) for out in outputs):
            error = RuntimeError(
                f"outputs' batch dims {[o.shape[:1] for o in outputs]} != batch size {total}")
        if error is not None:
            log.error(
                "inference failed: model=%s version=%s batch=%d requests=%d",
                self._model, self._version, total, len(live), exc_info=error,
            )
            failure = InferenceFailed(self._model)
            for entry in live:
                if not entry.future.done():
                    entry.future.set_exception(failure)
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
