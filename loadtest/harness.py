"""What the sweep and the bench share: a pinned server process, a lean closed-loop gRPC client,
and readings of the server's own metrics, CPU time and memory."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from loadtest.payloads import MODEL_INFER
from service import launcher
from service.launcher import ROOT, ServerProcess as Server, histogram_totals


def cores() -> tuple[list[str], list[str]]:
    """(taskset prefix for the server, cores for the load generator): separate cores when the
    host has at least two, no pinning otherwise."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return [], available
    return ["taskset", "-c", str(available[0])], available[1:]


def copy_model(model: Path, target: Path, name: str, edit) -> Path:
    """`model` under `target/name` with its config.yaml changed by `edit(config)`; the version
    folders are symlinks (the server refuses a model folder that is itself a link out of its
    repository, not links inside it)."""
    copy = target / name
    copy.mkdir(parents=True)
    for child in model.iterdir():
        if child.name != "config.yaml":
            (copy / child.name).symlink_to(child.resolve())
    config = yaml.safe_load((model / "config.yaml").read_text())
    config["name"] = name
    edit(config)
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def start_server(repo: Path, *args: str, pin: list[str] | None = None,
                 intra_op_threads: int = 1, timeout: float = 120) -> Server:
    """A server on the CPU provider (what every ceiling is measured on), pinned with `pin`."""
    return launcher.start_server(repo, "--device", "cpu", "--intra-op-threads",
                                 str(intra_op_threads), *args, pin=pin, timeout=timeout)


@dataclass
class LoadResult:
    clients: int
    batch_size: int
    seconds: float
    calls: int
    errors: int
    latencies: list[float]  # seconds, calls started and finished inside the window
    client_cpu: float       # cores used by this process during the window
    server_cpu: float | None = None
    metrics_before: str = ""
    metrics_after: str = ""

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    def computed_per_s(self, model: str) -> float:
        """Items the server computed for `model` during the window, per second (its
        inference_batch_size histogram): the work of every call that ran in the window, where the
        client's own count (`items_per_s`) keeps only the calls that started and finished in it,
        which for calls of a tenth of the window or more leaves out a large share of the work."""
        after, _ = histogram_totals(self.metrics_after, "inference_batch_size", model=model)
        before, _ = histogram_totals(self.metrics_before, "inference_batch_size", model=model)
        return (after - before) / self.seconds

    @property
    def items_per_s(self) -> float:
        return self.calls * self.batch_size / self.seconds

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    def mean_batch(self, model: str) -> float:
        """Mean executed batch size over the window, from the server's own histogram."""
        s1, c1 = histogram_totals(self.metrics_after, "inference_batch_size", model=model)
        s0, c0 = histogram_totals(self.metrics_before, "inference_batch_size", model=model)
        return (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")

    def mean_ms(self, metric: str, model: str) -> float:
        s1, c1 = histogram_totals(self.metrics_after, metric, model=model)
        s0, c0 = histogram_totals(self.metrics_before, metric, model=model)
        return (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else float("nan")


async def _closed_loop(address: str, payload: bytes | list[bytes], clients: int,
                       batch_size: int, seconds: float, warmup: float, timeout: float,
                       server: Server | None, method: str):
    options = [("grpc.max_receive_message_length", 256 << 20),
               ("grpc.max_send_message_length", 256 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        # Bytes in, bytes out: the request is serialised once, the response is not parsed.
        call = channel.unary_unary(method)
        payloads = payload if isinstance(payload, list) else [payload]
        await call(payloads[0], timeout=max(timeout, 30))  # connect and check, outside timing

        def caller(body: bytes) -> Callable[[], Awaitable[bool]]:
            async def one_call() -> bool:
                try:
                    await call(body, timeout=timeout)
                    return True
                except grpc.aio.AioRpcError:
                    return False
            return one_call

        callers = [caller(payloads[i % len(payloads)]) for i in range(clients)]
        return await timed_callers(callers, batch_size, seconds, warmup, server)


async def timed_callers(callers: list[Callable[[], Awaitable[bool]]], batch_size: int,
                        seconds: float, warmup: float, server: Server | None) -> LoadResult:
    """Run each caller in a closed loop (the next call as soon as the last returns; a caller
    answers whether its call succeeded) for `seconds` after `warmup`, and read this process's
    CPU, and the server's CPU and metrics, over the same window. Shared by every protocol's
    load generator."""
    loop = asyncio.get_running_loop()
    begin = time.perf_counter() + warmup
    end = begin + seconds
    latencies: list[float] = []
    counts = {"calls": 0, "errors": 0}

    async def client(one_call):
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            ok = await one_call()
            t1 = time.perf_counter()
            if begin <= t0 and t1 <= end:
                if ok:
                    counts["calls"] += 1
                    latencies.append(t1 - t0)
                else:
                    counts["errors"] += 1

    readings = {}

    async def window():
        await asyncio.sleep(max(0.0, begin - time.perf_counter()))
        if server is not None:
            readings["m0"] = await loop.run_in_executor(None, server.metrics_text)
            readings["s0"] = server.cpu_seconds()
        readings["c0"], readings["w0"] = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        readings["c1"], readings["w1"] = time.process_time(), time.perf_counter()
        if server is not None:
            readings["s1"] = server.cpu_seconds()
            readings["m1"] = await loop.run_in_executor(None, server.metrics_text)

    await asyncio.gather(window(), *(client(one_call) for one_call in callers))
    wall = readings["w1"] - readings["w0"]
    result = LoadResult(len(callers), batch_size, seconds, counts["calls"], counts["errors"],
                        latencies, (readings["c1"] - readings["c0"]) / wall)
    if server is not None:
        result.server_cpu = (readings["s1"] - readings["s0"]) / wall
        result.metrics_before, result.metrics_after = readings["m0"], readings["m1"]
    return result


def closed_loop(address: str, payload: bytes | list[bytes], clients: int, batch_size: int,
                seconds: float, warmup: float = 1.0, timeout: float = 10.0,
                server: Server | None = None, method: str = MODEL_INFER) -> LoadResult:
    """`clients` concurrent callers, each sending the next request as soon as the last returns,
    for `seconds` after `warmup`; measures this process's own CPU use over the same window.
    `payload` is every client's request, or one per client (client i sends payload[i])."""
    return asyncio.run(_closed_loop(address, payload, clients, batch_size, seconds, warmup,
                                    timeout, server, method))
