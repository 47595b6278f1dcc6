"""`bench sr_x3_256_shm_ratio`: x3 super-resolution of a 256x256 image with the input and the
output in system shared memory (Triton's extension), 4 clients, against the in-process ceiling.

Each client has its own input region (the image, written once) and output region (768x768 FP32),
registered with the server once; its request then carries only their names, and the server reads
the image from the mapping and writes the upscaled image into it. The same model is also measured
with the tensors in the messages, so the note says what shared memory buys on this path.

Measured in alternating short windows, in-process ceiling / served from shared memory / served
with raw tensors, WINDOWS times; each figure is the median of the per-window ratios to the ceiling
measured just before (one window each), so a window in which other processes stole the core
spoils one pair, not the figure. Served items are those the server computed in the window (see
`harness.LoadResult.computed_per_s`). Run on its own: `python -m loadtest.shm_bench [models/espcn_x3]`.
"""

from __future__ import annotations

import statistics
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import yaml

from loadtest import harness
from loadtest.payloads import infer_request_bytes, make_inputs, signature_from_config

CLIENTS = 4
IMAGE_SIZE = 256
WINDOWS = 5


@dataclass
class ShmFigures:
    ratio: float          # served from shared memory / in-process, median over the windows
    raw_ratio: float      # served with raw tensors in the messages / in-process, the same way
    cpu_ratio: float      # the shared-memory ratio per server CPU-second (cpuRat), median
    raw_cpu_ratio: float
    spread: tuple[float, float]  # the lowest and highest shared-memory window ratio

    @property
    def note(self) -> str:
        return (f"median of {WINDOWS} alternating windows (ceiling, shared memory, raw tensors), "
                f"{CLIENTS} clients each with its own input and output region: items/s ratio "
                f"{self.ratio:.2f} with shared memory (windows {self.spread[0]:.2f} to "
                f"{self.spread[1]:.2f}), {self.raw_ratio:.2f} with the tensors in the messages; "
                f"per server CPU-second {self.cpu_ratio:.2f} and {self.raw_cpu_ratio:.2f}")


class _Regions:
    """Each client's input and output segments, made and registered; unregistered and destroyed
    on exit."""

    def __init__(self, address: str, model: Path):
        import tritonclient.utils.shared_memory as shm
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._shm, self._pb = shm, service_pb2
        self._channel = grpc.insecure_channel(address)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        signature = signature_from_config(model)
        inputs, _ = make_inputs(signature, 1, "real", image_size=IMAGE_SIZE)
        (name, image), = inputs.items()
        factor = yaml.safe_load((model / "config.yaml").read_text())["task"]["upscale_factor"]
        out_bytes = image.nbytes * factor * factor  # one FP32 channel, factor x each side
        self.raw_request = infer_request_bytes(model.name, inputs, signature)
        self.requests: list[bytes] = []
        self._handles, self._names = [], []
        for client in range(CLIENTS):
            tag = uuid.uuid4().hex[:12]
            in_name, out_name = f"bench-in-{client}-{tag}", f"bench-out-{client}-{tag}"
            for region, size in ((in_name, image.nbytes), (out_name, out_bytes)):
                key = f"/onnxserve-bench-{region}"
                self._handles.append(shm.create_shared_memory_region(region, key, size))
                self._stub.SystemSharedMemoryRegister(service_pb2.SystemSharedMemoryRegisterRequest(
                    name=region, key=key, offset=0, byte_size=size))
                self._names.append(region)
            shm.set_shared_memory_region(self._handles[-2], [np.ascontiguousarray(image)])
            request = service_pb2.ModelInferRequest(model_name=model.name)
            tensor = request.inputs.add(name=name, datatype="FP32", shape=image.shape)
            tensor.parameters["shared_memory_region"].string_param = in_name
            tensor.parameters["shared_memory_byte_size"].int64_param = image.nbytes
            for spec in signature.outputs:
                output = request.outputs.add(name=spec.name)
                output.parameters["shared_memory_region"].string_param = out_name
                output.parameters["shared_memory_byte_size"].int64_param = out_bytes
            self.requests.append(request.SerializeToString())

    def __enter__(self) -> _Regions:
        return self

    def __exit__(self, *exc) -> None:
        for name in self._names:
            self._stub.SystemSharedMemoryUnregister(
                self._pb.SystemSharedMemoryUnregisterRequest(name=name))
        self._channel.close()
        for handle in self._handles:
            self._shm.destroy_shared_memory_region(handle)


def _ratio(result: harness.LoadResult, model: str, ceiling: dict, per_cpu: bool) -> float:
    if per_cpu:
        return result.computed_per_s(model) / result.server_cpu / ceiling["items_per_cpu_s"]
    return result.computed_per_s(model) / ceiling["items_per_s"]


def measure(address: str, model: Path, server: harness.Server, ceiling, seconds: float
            ) -> ShmFigures:
    """`ceiling(seconds)` measures the in-process ceiling (batch 1) in one window of `seconds`,
    as long as each served window: one window each, not the best of several, so that neither
    side of a pair is favoured."""
    windows = []  # (ceiling, served from shared memory, served raw)
    with _Regions(address, model) as regions:
        harness.closed_loop(address, regions.requests, CLIENTS, 1, 1.0, 0.5, server=server)
        for _ in range(WINDOWS):
            base = ceiling(seconds)
            shared = harness.closed_loop(address, regions.requests, CLIENTS, 1, seconds, 0.2,
                                         server=server)
            raw = harness.closed_loop(address, regions.raw_request, CLIENTS, 1, seconds, 0.2,
                                      server=server)
            windows.append((base, shared, raw))

    def ratios(index: int, per_cpu: bool) -> list[float]:
        return [_ratio(w[index], model.name, w[0], per_cpu) for w in windows]

    shared = ratios(1, False)
    return ShmFigures(statistics.median(shared), statistics.median(ratios(2, False)),
                      statistics.median(ratios(1, True)), statistics.median(ratios(2, True)),
                      (min(shared), max(shared)))


def main() -> int:
    from loadtest.bench import ceiling as measure_ceiling

    model = Path(sys.argv[1] if len(sys.argv) > 1 else harness.ROOT / "models" / "espcn_x3")
    pin, client_cores = harness.cores()
    if pin:
        import os

        os.sched_setaffinity(0, {int(c) for c in client_cores})
    server = harness.start_server(model.parent, "--model", model.name, pin=pin)
    try:
        figures = measure(server.grpc_address, model, server,
                          lambda s: measure_ceiling(pin, model, [1], s, trials=1)[1], 3.0)
    finally:
        server.terminate()
    print(figures.note)
    print(f"bench sr_x3_256_shm_ratio measured={figures.ratio:.2f} goal>=0.97 "
          f"{'PASS' if figures.ratio >= 0.97 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
