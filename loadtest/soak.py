"""Soak: a loopback server at ~70% of its measured capacity for a long time, mixed models and sizes.

    .venv/bin/python -m loadtest.soak                      # 30 minutes, 5-minute windows
    .venv/bin/python -m loadtest.soak --minutes 2 --window-s 30

It builds a model repository (two synthetic MLPs of different widths, plus the bundled
fashion_mlp when models/ has it), starts `python -m service serve` on 127.0.0.1, measures
capacity over the request mix, then sends an open loop at `--load` times that rate. Capacity is
the highest open-loop rate, at or below a closed loop's throughput, that the server keeps up with
(each probed for `--probe-s` seconds). Per window it prints requests, errors, p50/p99 latency and
the server's RSS; at the end a verdict: PASS needs zero errors and RSS after the first window
within `--max-rss-growth` percent of the first window's. Exit status 0 on PASS, 1 on FAIL.

Every loop is bounded (by time and by a cap on calls in flight); nothing leaves the machine.
The request mix: ModelInfer on each model at several batch sizes, and the task API's Classify
with PNG images when fashion_mlp is served.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import yaml

from loadtest.harness import ROOT, Server, start_server
from loadtest.payloads import MODEL_INFER, classify_request_bytes, infer_request_bytes, task_messages

CLASSIFY = "/onnxserve.task.v1.TaskService/Classify"


# -- the model repository -------------------------------------------------------------------------


def mlp_model(path: Path, width: int, hidden: int, classes: int = 10, seed: int = 0) -> None:
    """A two-layer MLP `[batch, width] -> [batch, classes]` with random weights."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((width, hidden)).astype(np.float32) * 0.05
    w2 = rng.standard_normal((hidden, classes)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]),
         helper.make_node("Relu", ["h"], ["a"]),
         helper.make_node("MatMul", ["a", "w2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["y"], axis=1)],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    (path / "1").mkdir(parents=True, exist_ok=True)
    save(model, str(path / "1" / "model.onnx"))
    config = {
        "max_batch_size": 32,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [width]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [classes]}],
        "dynamic_batching": {"max_queue_delay_us": 500, "preferred_batch_sizes": [8, 32],
                             "max_queue_size": 512},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def build_repository(root: Path) -> list[str]:
    mlp_model(root / "mlp_small", width=64, hidden=64, seed=1)
    mlp_model(root / "mlp_large", width=1024, hidden=1024, seed=2)
    models = ["mlp_small", "mlp_large"]
    bundled = ROOT / "models" / "fashion_mlp"
    if (bundled / "config.yaml").is_file():
        shutil.copytree(bundled, root / "fashion_mlp")
        models.append("fashion_mlp")
    return models


# -- the request mix --------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    method: str
    payload: bytes
    weight: int


def request_mix(models: list[str], seed: int) -> list[Variant]:
    rng = np.random.default_rng(seed)
    mix = []
    for batch, weight in ((1, 4), (4, 2), (16, 1)):
        x = rng.standard_normal((batch, 64)).astype(np.float32)
        mix.append(Variant(f"mlp_small x{batch}", MODEL_INFER, infer_request_bytes("mlp_small", {"x": x}),
                           weight))
    for batch, weight in ((1, 2), (8, 1)):
        x = rng.standard_normal((batch, 1024)).astype(np.float32)
        mix.append(Variant(f"mlp_large x{batch}", MODEL_INFER, infer_request_bytes("mlp_large", {"x": x}),
                           weight))
    if "fashion_mlp" in models:
        for batch, weight in ((1, 2), (32, 1)):
            x = rng.random((batch, 1, 28, 28)).astype(np.float32)
            mix.append(Variant(f"fashion_mlp x{batch}", MODEL_INFER,
                               infer_request_bytes("fashion_mlp", {"images": x}), weight))
        for images, weight in ((1, 2), (4, 1)):
            pixels = rng.integers(0, 256, (images, 28, 28, 1), np.uint8)
            mix.append(Variant(f"Classify fashion_mlp {images} PNG", CLASSIFY,
                               classify_request_bytes(task_messages(), "fashion_mlp", pixels,
                                                      "png"), weight))
    return mix


# -- load -------------------------------------------------------------------------------------


@dataclass
class Window:
    index: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    rss_mib: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


class Load:
    """Calls over one channel, picked from the mix by weight, results recorded per window."""

    def __init__(self, channel: grpc.aio.Channel, mix: list[Variant], seed: int, timeout: float):
        self._calls = {v.method: channel.unary_unary(v.method) for v in mix}  # bytes in and out
        self._mix = mix
        self._weights = [v.weight for v in mix]
        self._random = random.Random(seed)
        self._timeout = timeout

    def pick(self) -> Variant:
        return self._random.choices(self._mix, self._weights)[0]

    async def call(self, variant: Variant, windows: list[Window] | None) -> bool:
        """One call; its outcome goes to the window open when it completes."""
        started = time.perf_counter()
        try:
            response = await self._calls[variant.method](variant.payload, timeout=self._timeout)
            ok = len(response) > 0
            error = "" if ok else "empty response"
        except grpc.aio.AioRpcError as exc:
            ok, error = False, f"{exc.code().name}: {exc.details()}"
        if windows is not None:
            window = windows[-1]
            if ok:
                window.latencies.append(time.perf_counter() - started)
            else:
                window.errors[f"{variant.name}: {error}"] = \
                    window.errors.get(f"{variant.name}: {error}", 0) + 1
        return ok


async def measure_capacity(load: Load, clients: int, seconds: float, warmup: float) -> float:
    """Completed calls per second of a closed loop with `clients` callers over the mix."""
    counts = {"done": 0}
    begin = time.perf_counter() + warmup
    end = begin + seconds

    async def client():
        while time.perf_counter() < end:
            variant = load.pick()
            ok = await load.call(variant, None)
            if ok and time.perf_counter() >= begin:
                counts["done"] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return counts["done"] / seconds


async def open_loop(load: Load, server: Server, rate: float, minutes: float, window_s: float,
                    max_inflight: int, report: bool = True) -> tuple[list[Window], int]:
    """Calls started at `rate` per second for `minutes`, whatever happens to earlier ones; a
    window closes every `window_s` seconds. Also returns how many sends the in-flight cap held
    back (0 unless the server falls behind)."""
    start = time.perf_counter()
    stop_at = start + minutes * 60
    windows = [Window(0)]
    inflight = asyncio.Semaphore(max_inflight)
    tasks: set[asyncio.Task] = set()
    late = 0

    async def one(variant: Variant):
        try:
            await load.call(variant, windows)
        finally:
            inflight.release()

    loop = asyncio.get_running_loop()

    async def windows_clock():
        # Every window but the last closes on the clock; the last once its calls are done.
        while (boundary := start + len(windows) * window_s) < stop_at - 1e-6:
            await asyncio.sleep(max(0.0, boundary - time.perf_counter()))
            windows[-1].rss_mib = await loop.run_in_executor(None, server.rss_mib)
            windows.append(Window(len(windows)))
            if report:
                report_window(windows[-2], window_s, windows[0])

    clock = asyncio.create_task(windows_clock())
    sent = 0
    while True:
        due = start + sent / rate
        if due >= stop_at:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if inflight.locked():
            late += 1  # the cap on calls in flight holds the open loop back: a sign of overload
        await inflight.acquire()
        task = asyncio.create_task(one(load.pick()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    await asyncio.gather(*tasks)
    await clock
    windows[-1].rss_mib = await loop.run_in_executor(None, server.rss_mib)
    if report:
        report_window(windows[-1], window_s, windows[0])
    return windows, late


async def sustainable_rate(load: Load, server: Server, estimate: float, seconds: float,
                           max_inflight: int) -> float:
    """The highest of a few open-loop rates, from `estimate` down, that the server keeps up with
    for `seconds`: no send held back by the in-flight cap (a backlog fills it within a second or
    two), no error, and a median under 50 ms. The tail is left out of the test: on a shared
    machine it follows the neighbours' load more than ours."""
    for fraction in (1.0, 0.85, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2):
        rate = estimate * fraction
        (window,), late = await open_loop(load, server, rate, seconds / 60, seconds,
                                          max_inflight, report=False)
        kept_up = late == 0 and not window.errors and window.percentile_ms(50) < 50
        print(f"  probe {rate:6.0f} calls/s: p50 {window.percentile_ms(50):7.2f} ms, p99 "
              f"{window.percentile_ms(99):7.2f} ms, held back {late}: "
              f"{'kept up' if kept_up else 'fell behind'}", flush=True)
        if kept_up:
            return rate
    return estimate * 0.1


def report_window(window: Window, window_s: float, first: Window) -> None:
    growth = (window.rss_mib / first.rss_mib - 1) * 100 if first.rss_mib else 0.0
    begin, end = window.index * window_s, (window.index + 1) * window_s
    minutes = f"{int(begin // 60):02d}:{begin % 60:02.0f}-{int(end // 60):02d}:{end % 60:02.0f}"
    print(f"window {window.index + 1:2d} [{minutes}]: requests {window.requests:7d}  "
          f"errors {sum(window.errors.values()):3d}  p50 {window.percentile_ms(50):7.2f} ms  "
          f"p99 {window.percentile_ms(99):7.2f} ms  RSS {window.rss_mib:7.1f} MiB "
          f"({growth:+.1f}% vs window 1)", flush=True)
    for what, count in sorted(window.errors.items()):
        print(f"    {count} x {what}", flush=True)


async def run(args, server: Server, mix: list[Variant]) -> int:
    options = [("grpc.max_receive_message_length", 64 << 20),
               ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(server.grpc_address, options=options) as channel:
        load = Load(channel, mix, args.seed, args.timeout)
        for variant in mix:  # every variant works before anything is measured
            if not await load.call(variant, None):
                print(f"request '{variant.name}' fails; not soaking", file=sys.stderr)
                return 1
        # Capacity: a closed loop's throughput, then the highest open-loop rate at or below it
        # that the server keeps up with (a closed loop hides the client's own per-call cost).
        if args.capacity:
            capacity = args.capacity
        else:
            closed = await measure_capacity(load, args.clients, args.calibrate_s, warmup=2.0)
            print(f"closed loop ({args.clients} clients, {args.calibrate_s:g} s): "
                  f"{closed:.0f} calls/s", flush=True)
            capacity = await sustainable_rate(load, server, closed, args.probe_s,
                                              args.max_inflight)
        rate = args.load * capacity
        print(f"capacity {capacity:.0f} calls/s; soaking at {rate:.0f} calls/s ({args.load:.0%}) "
              f"for {args.minutes:g} min in {args.window_s:g} s windows", flush=True)
        windows, late = await open_loop(load, server, rate, args.minutes, args.window_s,
                                        args.max_inflight)

    requests = sum(w.requests for w in windows)
    errors = sum(sum(w.errors.values()) for w in windows)
    first = windows[0].rss_mib
    later = [w.rss_mib for w in windows[1:]]
    growth = (max(later) / first - 1) * 100 if later and first else 0.0
    text = server.metrics_text()
    server_errors = sum(
        value for line in text.splitlines() if line.startswith("inference_requests_total{")
        and 'code="OK"' not in line for value in [float(line.rsplit(" ", 1)[1])])
    print(f"total: {requests} requests, {errors} errors (server counted {server_errors:.0f} "
          f"non-OK), {late} sends held back by the in-flight cap")
    print("p99 per window (ms): " + ", ".join(f"{w.percentile_ms(99):.2f}" for w in windows))
    print("RSS per window (MiB): " + ", ".join(f"{w.rss_mib:.1f}" for w in windows))
    if later:
        print(f"RSS growth after window 1: {growth:+.2f}% (limit {args.max_rss_growth:g}%)")
    else:
        print("RSS growth: one window only, nothing to compare")
    passed = errors == 0 and server_errors == 0 and growth < args.max_rss_growth
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration")
    parser.add_argument("--window-s", type=float, default=300.0, help="report window, seconds")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop callers to measure")
    parser.add_argument("--calibrate-s", type=float, default=20.0,
                        help="closed-loop capacity measurement, seconds")
    parser.add_argument("--probe-s", type=float, default=10.0,
                        help="each open-loop probe of the capacity, seconds")
    parser.add_argument("--capacity", type=float, default=0.0,
                        help="calls/s to take as capacity instead of measuring it")
    parser.add_argument("--max-inflight", type=int, default=256, help="cap on calls in flight")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, seconds")
    parser.add_argument("--max-rss-growth", type=float, default=5.0,
                        help="allowed RSS growth after the first window, percent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-repo", action="store_true", help="keep the model repository")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.window_s <= 0 or not 0 < args.load <= 1:
        parser.error("--minutes and --window-s must be > 0 and --load in (0, 1]")

    repo = Path(tempfile.mkdtemp(prefix="soak-repo-"))
    try:
        models = build_repository(repo)
        mix = request_mix(models, args.seed)
        print(f"models: {', '.join(models)}; mix: "
              + ", ".join(f"{v.name} (w{v.weight})" for v in mix), flush=True)
        server = start_server(repo)  # binds 127.0.0.1 only
        try:
            status = asyncio.run(run(args, server, mix))
        finally:
            code = server.terminate()
        print(f"server exited with {code}")
        return status if code == 0 else 1
    finally:
        if args.keep_repo:
            print(f"repository kept at {repo}")
        else:
            shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
