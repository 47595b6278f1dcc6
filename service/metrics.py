"""Prometheus metrics, on a registry owned by one server (so tests can run several servers)."""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

# 100 us .. 10 s in 1-1.5-2-3-5-7.5 steps: fine enough for p50/p95/p99 and, being fixed buckets,
# aggregatable across replicas with histogram_quantile(sum by (le) (rate(...))).
LATENCY_BUCKETS = tuple(
    round(base * 10.0**exp, 7)
    for exp in range(-4, 1)
    for base in (1.0, 1.5, 2.0, 3.0, 5.0, 7.5)
) + (10.0,)

BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)

PREFIX = "inference"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Calls answered, by model, version, call (ModelInfer, Classify, ...), canonical status "
            "code and protocol (grpc, http).",
            ["model", "version", "rpc", "code", "protocol"], registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end call latency inside the server (decode, queue, compute, encode).",
            ["model", "version", "rpc", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_latency = Histogram(
            f"{PREFIX}_queue_duration_seconds",
            "Time a request waited in its model's batching queue.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute_latency = Histogram(
            f"{PREFIX}_compute_duration_seconds",
            "ONNX Runtime time per executed batch.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Items per executed batch (after dynamic batching merged requests).",
            ["model", "version"], buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.batch_waits = Counter(
            f"{PREFIX}_batch_waits",
            "Batches whose instance waited for more requests before running them (the batching "
            "rule waits only while that makes items cheaper; see README 'Dynamic batching').",
            ["model", "version"], registry=r,
        )
        self.batch_wait_seconds = Counter(
            f"{PREFIX}_batch_wait_seconds",
            "Time instances spent waiting for more requests, at most max_queue_delay per batch.",
            ["model", "version"], registry=r,
        )
        self.inflight = Gauge(
            f"{PREFIX}_inflight_requests", "RPCs being handled now, by model.",
            ["model"], registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Requests waiting in the batching queue.",
            ["model", "version"], registry=r,
        )
        self.queue_capacity = Gauge(
            f"{PREFIX}_queue_capacity", "The queue's bound (max_queue_size) per model version.",
            ["model", "version"], registry=r,
        )
        self.dropped = Counter(
            f"{PREFIX}_requests_dropped",
            "Queued requests removed before compute, by reason (deadline, cancelled).",
            ["model", "version", "reason"], registry=r,
        )
        self.model_ready = Gauge(
            f"{PREFIX}_model_ready", "1 when the model version is loaded and ready, else 0.",
            ["model", "version"], registry=r,
        )
        self.execution_provider = Gauge(
            f"{PREFIX}_execution_provider_info",
            "1 for the execution provider each loaded model version runs on.",
            ["model", "version", "provider"], registry=r,
        )

    def forget_version(self, model: str, version: str, provider: str) -> None:
        """Drop a version's gauges once it is unloaded, so dashboards do not show ghosts."""
        for gauge, labels in (
            (self.queue_depth, (model, version)),
            (self.queue_capacity, (model, version)),
            (self.model_ready, (model, version)),
            (self.execution_provider, (model, version, provider)),
        ):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    def forget_failed_load(self, model: str) -> None:
        """Drop the version-less 'not ready' series a failed load left, once the model loads."""
        try:
            self.model_ready.remove(model, "")
        except KeyError:
            pass

    def serve_http(
        self, host: str, port: int, authorize: Callable[[str], bool] | None = None
    ) -> tuple[WSGIServer, int]:
        """Serve /metrics over HTTP in a daemon thread; returns (server, bound port). With
        `authorize`, a scrape must send an Authorization header it accepts."""
        app = make_wsgi_app(self.registry)
        if authorize is not None:
            app = _require_authorization(app, authorize)
        server = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server, server.server_port


class CallRecorder:
    """One front end's calls: counted and timed by (model, version, call, code) under its
    protocol label, and tracked while in flight so that shutdown can wait for them. Metric children
    are cached off the hot path; label values are bounded, as model and version are only set for
    real models."""

    def __init__(self, metrics: Metrics, protocol: str):
        self._metrics = metrics
        self._protocol = protocol
        self._counters: dict[tuple, object] = {}
        self._latencies: dict[tuple, object] = {}
        self.active = 0
        self._idle: asyncio.Event | None = None

    def begin(self) -> float:
        """A call starts; returns its start time for `end`."""
        self.active += 1
        if self._idle is not None:
            self._idle.clear()
        return time.perf_counter()

    def end(self, model: str, version: str, call: str, code: str, started: float) -> None:
        self.observe(model, version, call, code, started)
        self.leave()

    def observe(self, model: str, version: str, call: str, code: str, started: float) -> None:
        """Count and time one call (or one request of a stream) without ending anything."""
        key = (model, version, call)
        counter = self._counters.get(key + (code,))
        if counter is None:
            counter = self._counters[key + (code,)] = self._metrics.requests.labels(
                *key, code, self._protocol)
        latency = self._latencies.get(key)
        if latency is None:
            latency = self._latencies[key] = self._metrics.request_latency.labels(
                *key, self._protocol)
        counter.inc()
        latency.observe(time.perf_counter() - started)

    def leave(self) -> None:
        """A call started with `begin` is over."""
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call is in flight (the event is made inside the running loop)."""
        if self._idle is None:
            self._idle = asyncio.Event()
        if self.active == 0:
            self._idle.set()
        await self._idle.wait()


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - one line per scrape is noise
        pass


def _require_authorization(app, authorize: Callable[[str], bool]):
    def guarded(environ, start_response):
        if not authorize(environ.get("HTTP_AUTHORIZATION", "")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"missing or invalid API key\n"]
        return app(environ, start_response)

    return guarded
