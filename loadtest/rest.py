"""The REST front end under load: a lean closed-loop HTTP/1.1 client, the REST lines of `make
bench`, and REST against gRPC per call.

    python -m loadtest.rest [--model fashion_cnn] [--rounds 5] [--seconds 2] [--load 32x1]
                            [--profile 8]

The client is to REST what harness.closed_loop is to gRPC: each caller owns one keep-alive
connection (asyncio streams), sends the same pre-serialised request bytes (Triton's binary tensor
extension, every output asked for in binary, as tritonclient.http sends them) and reads only the
status line, Content-Length and that many body bytes. It measures its own CPU over the window
beside the server's, so a run can tell which side ran out of core.

The command line starts one pinned server (as `make bench` does) and, for 1 x 1, 1 x 64 and
32 x 1 items (or each --load), alternates gRPC and REST windows; it prints each window, the medians
of the pairwise ratios and differences, and the server's CPU time per call for each protocol by
server thread; with --profile, py-spy's GIL-holding samples under each protocol, by area.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from loadtest import harness
from loadtest.payloads import make_inputs, signature_from_config
from service.core.datatypes import DATATYPES

HEALTH_LIVE = "/v2/health/live"


def infer_request(address: str, model: str, inputs: dict[str, np.ndarray],
                  outputs: list[str]) -> bytes:
    """A whole HTTP/1.1 POST .../infer request in Triton's binary tensor extension: the JSON
    header, then each input's raw bytes; every output in `outputs` asked for in binary."""
    header = orjson.dumps({
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": _datatype(array),
                    "parameters": {"binary_data_size": array.nbytes}}
                   for name, array in inputs.items()],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    })
    body = header + b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values())
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {address}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def get_request(address: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()


def _datatype(array: np.ndarray) -> str:
    return next(name for name, row in DATATYPES.items() if row.numpy == array.dtype)


def payload(model: Path, batch: int, address: str) -> bytes:
    """The REST twin of bench.payload: the same inputs, every output requested."""
    signature = signature_from_config(model)
    inputs, _ = make_inputs(signature, batch, "real", image_size=256)
    return infer_request(address, model.name, inputs, [spec.name for spec in signature.outputs])


class HttpError(Exception):
    pass


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> int:
    """Send one request, read its whole response; returns the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    start = head.lower().find(b"\r\ncontent-length:")
    if start < 0:
        raise HttpError(f"a response without Content-Length: {head[:200]!r}")
    start += len(b"\r\ncontent-length:")
    await reader.readexactly(int(head[start:head.index(b"\r\n", start)]))
    return status


async def _closed_loop(address: str, request: bytes, clients: int, batch_size: int,
                       seconds: float, warmup: float, server: harness.Server | None):
    host, port = address.rsplit(":", 1)
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]
    try:
        for reader, writer in connections:  # each connection checked once, outside timing
            status = await _exchange(reader, writer, request)
            if status != 200:
                raise HttpError(f"the request is answered with {status}")

        def caller(reader, writer):
            async def one_call() -> bool:
                return await _exchange(reader, writer, request) == 200
            return one_call

        return await harness.timed_callers([caller(r, w) for r, w in connections], batch_size,
                                           seconds, warmup, server)
    finally:
        for _, writer in connections:
            writer.close()


def closed_loop(address: str, request: bytes, clients: int, batch_size: int, seconds: float,
                warmup: float = 1.0, server: harness.Server | None = None) -> harness.LoadResult:
    """`clients` keep-alive connections, each sending `request` again as soon as its response
    is read, for `seconds` after `warmup`; a response other than 200 counts as an error."""
    return asyncio.run(_closed_loop(address, request, clients, batch_size, seconds, warmup,
                                    server))


def served(address: str, request: bytes, clients: int, batch: int, seconds: float,
           server: harness.Server, windows: int = 3) -> harness.LoadResult:
    """As bench.served: the best of `windows` back-to-back windows."""
    results = [closed_loop(address, request, clients, batch, seconds / windows,
                           warmup=1.0 if i == 0 else 0.2, server=server)
               for i in range(windows)]
    return max(results, key=lambda r: r.items_per_s)


def cpu_us(result: harness.LoadResult) -> float:
    """Server CPU microseconds per call."""
    return result.server_cpu / result.calls_per_s * 1e6 if result.calls else float("nan")


def bench_targets(server: harness.Server, model: Path, seconds: float, table, ceiling):
    """`make bench`'s REST lines, beside the gRPC ones on the same server: (id, measured, op,
    goal, note) for rest_overhead_p50_ms, rest_batch64_ratio and rest_32x1_ratio. `ceiling(size)`
    measures the in-process ceiling at one batch size right before each served run; rows go into
    `table`."""
    address = server.http_address
    bare = closed_loop(address, get_request(address, HEALTH_LIVE), 1, 1, min(seconds, 3.0),
                       server=server)
    targets = []

    one = ceiling(1)
    r = served(address, payload(model, 1, address), 1, 1, seconds, server)
    table.add("6 rest_overhead (1 client, 1 item)", model.name, r, one)
    targets.append(("rest_overhead_p50_ms", r.p50_ms - one["p50_ms"], "<=", 0.5,
                    f"served p50 {r.p50_ms:.3f} ms - in-process p50 {one['p50_ms']:.3f} ms; "
                    f"{cpu_us(r):.0f} us server CPU per call; a bare REST call "
                    f"(GET {HEALTH_LIVE}) alone: p50 {bare.p50_ms:.3f} ms, {cpu_us(bare):.0f} us "
                    f"server CPU and {bare.client_cpu / bare.calls_per_s * 1e6:.0f} us client "
                    "CPU per call"))

    sixty_four = ceiling(64)
    r = served(address, payload(model, 64, address), 1, 64, seconds, server)
    ratio = table.add("7 rest_batch64", model.name, r, sixty_four)
    targets.append(("rest_batch64_ratio", ratio, ">=", 0.85,
                    f"{cpu_us(r):.0f} us server CPU per call of 64 items"))

    bare32 = closed_loop(address, get_request(address, HEALTH_LIVE), 32, 1, min(seconds, 3.0),
                         server=server)
    thirty_two = ceiling(32)
    r = served(address, payload(model, 1, address), 32, 1, seconds, server)
    ratio = table.add("8 rest 32x1 (batching on)", model.name, r, thirty_two)
    # As for batching_32x1_ratio: the best the layout allows if serving cost only bare calls.
    floor_us, item_us = cpu_us(bare32), 1e6 / thirty_two["items_per_cpu_s"]
    targets.append(("rest_32x1_ratio", ratio, ">=", 0.50,
                    f"mean executed batch {r.mean_batch(model.name):.1f}; p99 "
                    f"{r.percentile_ms(99):.2f} ms; a bare REST call under 32 clients costs "
                    f"{floor_us:.0f} us of server CPU and a batch-32 item {item_us:.0f} us, so "
                    f"the ratio cannot exceed {item_us / (floor_us + item_us):.2f} here; "
                    f"served: {cpu_us(r):.0f} us server CPU per call"))
    return targets


# -- REST against gRPC, alternating windows -----------------------------------------------------

# The comparison's tools import loadtest.bench, which imports this module: they are imported where
# they are used.

def _thread_labels(server: harness.Server) -> dict[int, str]:
    """Server thread ids to names: `main` (the event loop), Python's names (the ONNX Runtime
    instance threads, grpc.aio's poller) from py-spy, else the kernel's (gRPC's `event_engine`)."""
    from loadtest.thread_cpu import python_names, thread_cpu

    names = python_names(server.pid)
    return {tid: "main" if tid == server.pid else names.get(tid, kernel)
            for tid, (kernel, _) in thread_cpu(server.pid).items()}


def _by_thread(server: harness.Server, labels: dict[int, str], window) -> tuple[
        harness.LoadResult, dict[str, float]]:
    """Run `window()`; its result and the server's CPU microseconds per call by thread name."""
    from loadtest.thread_cpu import thread_cpu

    before = thread_cpu(server.pid)
    result = window()
    spent: dict[str, float] = {}
    for tid, (kernel, cpu) in thread_cpu(server.pid).items():
        label = labels.get(tid, kernel)
        spent[label] = spent.get(label, 0.0) + cpu - before.get(tid, (kernel, 0.0))[1]
    calls = max(result.calls, 1)
    return result, {label: s / calls * 1e6 for label, s in spent.items() if s > 0}


def compare(server: harness.Server, model: Path, clients: int, batch: int, rounds: int,
            seconds: float, profile_s: float) -> None:
    """gRPC and REST windows in turn on one server: each window's figures, then medians (of the
    pairwise ratios and differences, so that the host's drift between pairs cancels)."""
    from loadtest.bench import payload as grpc_payload

    grpc_body = grpc_payload(model, batch)
    rest_body = payload(model, batch, server.http_address)
    windows = {
        "grpc": lambda s: harness.closed_loop(server.grpc_address, grpc_body, clients, batch, s,
                                              0.3, server=server),
        "rest": lambda s: closed_loop(server.http_address, rest_body, clients, batch, s, 0.3,
                                      server=server),
    }
    labels = _thread_labels(server)
    rows: dict[str, list[tuple[harness.LoadResult, dict[str, float]]]] = {"grpc": [], "rest": []}
    print(f"\n{model.name} {clients} client(s) x {batch} item(s), {rounds} rounds of "
          f"{seconds:g} s per protocol:")
    print(f"  {'':<6} {'items/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'srv us/call':>11} "
          f"{'cli us/call':>11} {'batch':>6}")
    for index in range(rounds):
        # Alternate which protocol goes first, so that neither always follows the other.
        for protocol in ("grpc", "rest") if index % 2 == 0 else ("rest", "grpc"):
            r, threads = _by_thread(server, labels, lambda: windows[protocol](seconds))
            if not r.calls:
                print(f"  {protocol:<6} no call finished inside the window: left out")
                continue
            rows[protocol].append((r, threads))
            print(f"  {protocol:<6} {r.items_per_s:>9.0f} {r.p50_ms:>8.3f} "
                  f"{r.percentile_ms(99):>8.3f} {cpu_us(r):>11.0f} "
                  f"{r.client_cpu / r.calls_per_s * 1e6:>11.0f} {r.mean_batch(model.name):>6.1f}")
    pairs = [(g, r) for (g, _), (r, _) in zip(rows["grpc"], rows["rest"])]
    if not pairs:
        return
    median = statistics.median
    print(f"  median of pairs: REST/gRPC items/s {median(r.items_per_s / g.items_per_s for g, r in pairs):.3f}, "
          f"REST-gRPC p50 {median(r.p50_ms - g.p50_ms for g, r in pairs):+.3f} ms, "
          f"REST-gRPC server CPU per call "
          f"{median(cpu_us(r) - cpu_us(g) for g, r in pairs):+.0f} us")
    for protocol, results in rows.items():
        threads = sorted({label for _, spent in results for label in spent})
        split = ", ".join(f"{label} {median(spent.get(label, 0.0) for _, spent in results):.0f}"
                          for label in threads)
        print(f"  {protocol} server CPU per call {median(cpu_us(r) for r, _ in results):.0f} us, "
              f"by thread (medians): {split}")
    if profile_s:
        for protocol, window in windows.items():
            shares = gil_profile(server, lambda: window(profile_s + 0.5), profile_s)
            print(f"  {protocol}: GIL-holding samples by area (py-spy --gil): " + ", ".join(
                f"{name} {share * 100:.1f}%" for name, share in shares))


def gil_profile(server: harness.Server, load, seconds: float) -> list[tuple[str, float]]:
    """py-spy's GIL-holding samples of the server during `load()`, summed by area of the request
    path (loadtest.profile's areas)."""
    from loadtest.profile import summarise

    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        record = subprocess.Popen(
            [spy, "record", "--pid", str(server.pid), "--duration", str(int(seconds)),
             "--rate", "250", "--gil", "--nonblocking", "--format", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        load()
        _, errors = record.communicate()
        if not raw.is_file():
            raise RuntimeError(f"py-spy recorded nothing: {errors[-500:]}")
        return summarise(raw)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion_cnn")
    parser.add_argument("--repository", type=Path,
                        default=Path(os.environ.get("BENCH_MODELS", harness.ROOT / "models")))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per window")
    parser.add_argument("--load", action="append", metavar="CLIENTSxITEMS",
                        help="e.g. 32x1 (repeatable; default 1x1, 1x64, 32x1)")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="then record each protocol with py-spy for SECONDS per load")
    args = parser.parse_args(argv)
    loads = [tuple(map(int, spec.split("x"))) for spec in args.load or ["1x1", "1x64", "32x1"]]
    pin, client_cores = harness.cores()
    if pin:
        os.sched_setaffinity(0, {int(c) for c in client_cores})
    server = harness.start_server(args.repository, "--model", args.model, pin=pin)
    try:
        print(f"server pinned with `{' '.join(pin) or '-'}`; srv/cli us/call = server / this "
              "process's CPU time per call")
        for clients, batch in loads:
            compare(server, args.repository / args.model, clients, batch, args.rounds,
                    args.seconds, args.profile)
    finally:
        server.terminate()


if __name__ == "__main__":
    sys.exit(main())
