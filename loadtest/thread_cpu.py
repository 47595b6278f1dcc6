"""Server CPU per call, by server thread, under a closed-loop load.

    python -m loadtest.thread_cpu fashion_cnn:1:64 fashion_cnn:32:1 espcn_x3:4:1

Each argument is model:clients:items-per-request. The server runs pinned as in `make bench`; the
figures are CPU time per call of each of its threads (from /proc, 10 ms ticks, so read them to
two significant digits): the main thread runs the event loop and grpc.aio's Python side, the
instance threads run ONNX Runtime, `event_engine` threads are gRPC's C core. Thread names come
from `py-spy dump` when py-spy is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from loadtest import harness
from service.launcher import stat_cpu_seconds
from loadtest.bench import payload


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (kernel thread name, CPU seconds)}."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        threads[int(task.name)] = (name, stat_cpu_seconds(stat))
    return threads


def python_names(pid: int) -> dict[int, str]:
    """Python thread names by native thread id, from py-spy (empty without py-spy)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {}
    dump = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    return {int(tid): name for tid, name in re.findall(r"Thread (\d+) \(\w+\): \"([^\"]+)\"", dump)}


def main(argv: list[str]) -> None:
    repo = Path(os.environ.get("BENCH_MODELS", harness.ROOT / "models"))
    specs = [arg.split(":") for arg in argv] or [["fashion_cnn", "32", "1"]]
    pin, client_cores = harness.cores()
    if pin:
        os.sched_setaffinity(0, {int(c) for c in client_cores})
    models = sorted({model for model, _, _ in specs})
    server = harness.start_server(repo, *(a for m in models for a in ("--model", m)), pin=pin)
    try:
        names = python_names(server.pid)
        for model, clients, batch in specs:
            body = payload(repo / model, int(batch))
            harness.closed_loop(server.grpc_address, body, int(clients), int(batch), 2.0,
                                server=server)
            before = thread_cpu(server.pid)
            result = harness.closed_loop(server.grpc_address, body, int(clients), int(batch), 6.0,
                                         warmup=0.0, server=server)
            after = thread_cpu(server.pid)
            print(f"{model} {clients} clients x {batch} items: {result.items_per_s:.0f} items/s, "
                  f"p50 {result.p50_ms:.3f} ms, server {result.server_cpu:.2f} cores; "
                  "server CPU per call by thread:")
            for tid, (name, cpu) in sorted(after.items()):
                spent = cpu - before.get(tid, (name, 0.0))[1]
                if spent > 0:
                    label = "main" if tid == server.pid else names.get(tid, name)
                    print(f"    {label:<28} {spent / result.calls * 1e6:>9.0f} us")
    finally:
        server.terminate()


if __name__ == "__main__":
    main(sys.argv[1:])
