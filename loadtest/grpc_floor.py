"""What a bare unary gRPC call costs the server in Python, before any service code.

    python -m loadtest.grpc_floor

Starts an echo server (bytes in, 48 bytes out, no protobuf) pinned to the first core, once per
kind (grpc.aio on asyncio, grpc.aio on uvloop, the thread-pool `grpc.server`), drives it from the
other core with 1 and 32 closed-loop grpc.aio clients and prints the server's CPU time per call.
This is the floor under every served request in `make bench`'s layout.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent import futures

import grpc

from loadtest import harness

METHOD = "/floor.Echo/Echo"
KINDS = ("aio", "uvloop", "threads")


def _handlers(behaviour) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("floor.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(behaviour)})  # no (de)serialisers: bytes


def serve(kind: str) -> None:
    reply = b"x" * 48
    if kind == "threads":
        server = grpc.server(futures.ThreadPoolExecutor(8))
        server.add_generic_rpc_handlers((_handlers(lambda request, context: reply),))
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        server.start()
        server.wait_for_termination()
        return

    async def echo(request, context):
        return reply

    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handlers(echo),))
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        await server.start()
        await server.wait_for_termination()

    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main() -> None:
    pin, client_cores = harness.cores()
    if pin:
        os.sched_setaffinity(0, {int(c) for c in client_cores})
    print(f"{'server':<8} {'clients':>7} {'calls/s':>9} {'server CPU per call':>20}")
    for kind in KINDS:
        process = subprocess.Popen([*pin, sys.executable, "-m", "loadtest.grpc_floor", "--serve",
                                    kind], stdout=subprocess.PIPE, text=True, cwd=harness.ROOT)
        try:
            server = harness.Server(process, grpc_port=int(process.stdout.readline()))
            for clients in (1, 32):
                harness.closed_loop(server.grpc_address, b"y", clients, 1, 1.0, warmup=0.0,
                                    method=METHOD)
                cpu = server.cpu_seconds()
                result = harness.closed_loop(server.grpc_address, b"y" * 100, clients, 1, 4.0,
                                             warmup=0.0, method=METHOD)
                # The echo server has no metrics endpoint: its CPU is read around the run, which
                # also counts the one connecting call closed_loop makes first.
                per_call = (server.cpu_seconds() - cpu) / (result.calls + 1)
                print(f"{kind:<8} {clients:>7} {result.calls_per_s:>9.0f} "
                      f"{per_call * 1e6:>17.0f} us")
        finally:
            process.kill()
            process.wait()
        time.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        main()
