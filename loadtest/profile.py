"""Where a request's time goes on the server: a CPU budget per call and a py-spy profile.

    python -m loadtest.profile --model fashion_cnn --clients 32 --seconds 8

With the server pinned to one core (as in `make bench`), it measures the server's CPU time per
call for three calls of growing depth, so that their differences isolate each layer:

- `grpc.health.v1.Health/Check`: a bare grpc.aio unary call (no interceptor, no core);
- `ServerLive`: the same plus the service's interceptor and servicer;
- `ModelInfer` at batch 1: the whole request path, with ONNX Runtime's own time taken from the
  service's compute histogram.

Then it records the server with py-spy (`--gil`: only samples holding the GIL, i.e. Python-side
CPU; ONNX Runtime releases the GIL while it computes) under `--clients` concurrent callers and
sums the samples by area of the request path. The raw profile is kept (`--out`) for flame graphs
(`py-spy record --format speedscope` gives an interactive one).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

from loadtest import harness
from loadtest.bench import payload

HEALTH = "/grpc.health.v1.Health/Check"
LIVE = "/inference.GRPCInferenceService/ServerLive"

# First matching rule wins, checked from the innermost frame outwards.
AREAS = [
    ("onnxruntime", "ONNX Runtime call (GIL part)"),
    ("prometheus_client", "metrics (prometheus_client)"),
    ("service/grpc/interceptor", "service: interceptor"),
    ("service/grpc/kserve_codec", "service: codec (decode/encode)"),
    ("service/grpc/kserve", "service: KServe servicer"),
    ("service/http/v2_codec", "service: REST codec (decode/encode)"),
    ("service/http/", "service: REST framework and routes"),
    ("uvicorn/", "uvicorn (HTTP/1.1, ASGI)"),
    ("service/core/batcher", "service: batcher"),
    ("service/core/tensors", "service: validation"),
    ("service/core/", "service: core (other)"),
    ("concurrent/futures", "thread hop (executor, futures)"),
    ("threading.py", "thread hop (executor, futures)"),
    ("call_soon_threadsafe", "thread hop (executor, futures)"),
    ("_write_to_self", "thread hop (executor, futures)"),
    ("_read_from_self", "thread hop (executor, futures)"),
    ("grpc/", "grpc python layer"),
    ("Handle._run", "grpc.aio core callbacks (Cython/C, run by asyncio)"),
    # Under uvloop, C/Cython run by the loop has no Python frame of its own: the loop itself,
    # grpc.aio's callbacks, httptools' parser.
    ("Runner.run", "C/Cython run by uvloop (the loop, grpc.aio, httptools)"),
    ("asyncio/", "asyncio event loop"),
]


def area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for needle, name in AREAS:
            if needle in frame:
                return name
    return "other"


def summarise(raw: Path) -> list[tuple[str, float]]:
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        counts[area(stack.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    return [(name, n / total) for name, n in counts.most_common()]


def per_call(server: harness.Server, body: bytes, method: str, seconds: float, model: str = ""):
    r = harness.closed_loop(server.grpc_address, body, 1, 1, seconds, 0.5, server=server,
                            method=method)
    cpu_us = r.server_cpu / r.calls_per_s * 1e6 if r.calls else float("nan")
    compute_us = r.mean_ms("inference_compute_duration_seconds", model) * 1000 if model else 0.0
    return r, cpu_us, compute_us


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion_cnn")
    parser.add_argument("--repository", type=Path, default=harness.ROOT / "models")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/onnx-serve-profile.txt"))
    args = parser.parse_args(argv)

    pin, client_cores = harness.cores()
    if pin:
        os.sched_setaffinity(0, {int(c) for c in client_cores})
    model_dir = args.repository / args.model
    server = harness.start_server(args.repository, "--model", args.model, pin=pin)
    try:
        print(f"server CPU per call, 1 client, server pinned with `{' '.join(pin) or '-'}`:")
        rows = []
        for label, body, method, model in (
            ("Health/Check (bare grpc.aio call)", b"", HEALTH, ""),
            ("ServerLive (+ interceptor, servicer)", b"", LIVE, ""),
            (f"ModelInfer {args.model} batch 1", payload(model_dir, 1),
             harness.MODEL_INFER, args.model),
        ):
            r, cpu_us, compute_us = per_call(server, body, method, 3.0, model)
            rows.append((label, r.p50_ms, cpu_us, compute_us))
        for label, p50, cpu_us, compute_us in rows:
            extra = f", ONNX Runtime {compute_us:.0f} us" if compute_us else ""
            print(f"  {label:<40} p50 {p50:.3f} ms, server CPU {cpu_us:.0f} us/call{extra}")
        bare, live, infer = rows
        print(f"  => ModelInfer path beyond a bare call and ONNX Runtime: "
              f"{infer[2] - bare[2] - infer[3]:.0f} us CPU per call")

        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        body = payload(model_dir, args.batch_size)
        harness.closed_loop(server.grpc_address, body, args.clients, args.batch_size, 1.0, 0.2)
        record = subprocess.Popen(
            [spy, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)),
             "--rate", "1000", "--gil", "--nonblocking", "--format", "raw", "-o", str(args.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        r = harness.closed_loop(server.grpc_address, body, args.clients, args.batch_size,
                                args.seconds + 0.5, 0.0, server=server)
        record.wait()
        print(f"\n{args.clients} clients x batch {args.batch_size}: {r.items_per_s:.0f} items/s, "
              f"p50 {r.p50_ms:.2f} ms, mean executed batch {r.mean_batch(args.model):.1f}, "
              f"server CPU {r.server_cpu:.2f} cores = {r.server_cpu / r.calls_per_s * 1e6:.0f} "
              f"us/call, ONNX Runtime "
              f"{r.mean_ms('inference_compute_duration_seconds', args.model):.2f} ms/batch")
        if not args.out.is_file():
            print("py-spy produced nothing:", record.stderr.read()[-500:])
            return
        print(f"GIL-holding samples by area (py-spy --gil, raw profile in {args.out}):")
        for name, share in summarise(args.out):
            print(f"  {share * 100:5.1f}%  {name}")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
