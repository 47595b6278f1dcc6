"""Hostile shared-memory registrations and requests, property-based: every answer is OK or a
client error, a request that succeeds read exactly the bytes it named and wrote exactly where it
said, and valid traffic running meanwhile loses nothing."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from hypothesis import event, example, given, note, strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from onnx_builders import affine_config, affine_graph, simple_config, simple_graph, write_model
from reliability_support import CLIENT_STATUSES, ClosedLoop, assert_healthy, fp32_request, output
from servers import serving

SEGMENT_BYTES = 4096
# Regions over two segments: (segment, offset, byte_size) by name.
REGIONS = {"a": ("A", 0, 4096), "a_tail": ("A", 4000, 96), "b": ("B", 100, 1000),
           "out": ("OUT", 0, 4096)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("hostile-shm-repo")
    write_model(repo, "simple", simple_graph(), simple_config())
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config())
    yield from serving(repo)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def kserve(channel):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def segments(kserve):
    """Segments A, B and OUT of random bytes, and REGIONS registered over them."""
    made = {}
    rng = np.random.default_rng(0)
    for segment in ("A", "B", "OUT"):
        key = f"/onnxserve-hostile-{uuid.uuid4().hex}"
        handle = shm.create_shared_memory_region(segment, key, SEGMENT_BYTES)
        shm.set_shared_memory_region(handle, [rng.integers(0, 256, SEGMENT_BYTES, np.uint8)])
        made[segment] = (key, handle)
    for name, (segment, offset, size) in REGIONS.items():
        kserve.SystemSharedMemoryRegister(service_pb2.SystemSharedMemoryRegisterRequest(
            name=name, key=made[segment][0], offset=offset, byte_size=size))
    yield made
    kserve.SystemSharedMemoryUnregister(service_pb2.SystemSharedMemoryUnregisterRequest())
    for _, handle in made.values():
        shm.destroy_shared_memory_region(handle)


@pytest.fixture(scope="module")
def valid_traffic(server, segments):
    """Valid affine calls from other clients through the whole module, each result checked."""
    wrong = []

    def check(request, response):
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(1, 4)
        if not np.array_equal(output(response), x * 2 + 1):
            wrong.append(request.raw_input_contents[0])

    loop = ClosedLoop(server.grpc_address,
                      lambda i: fp32_request("affine", np.full((1, 4), i % 97, np.float32)),
                      threads=2, max_calls=100_000, limit_s=600, check=check).start()
    yield loop
    result = loop.stop()
    assert result.calls > 0 and result.failures() == {} and not wrong, result.details


def segment_bytes(segments, segment: str) -> bytes:
    return bytes(shm.get_contents_as_numpy(segments[segment][1], np.uint8, [SEGMENT_BYTES]))


def check(channel, code: grpc.StatusCode, details: str) -> None:
    note(f"-> {code.name}: {details}")
    event(code.name)
    assert code in CLIENT_STATUSES, f"{code.name}: {details}"
    assert_healthy(channel)


KEYS = st.one_of(
    st.sampled_from(["A", "OUT"]),  # the fixture's segments: some registrations succeed
    st.sampled_from(["/../../etc/passwd", "../x", "/", "", "//", "a/b", "/proc/self/mem", "..",
                     ".", "/dev/shm/x", "x\x00y", "x" * 300, "/onnxserve-absent", "\\..\\x",
                     "/%2e%2e/x", "~root"]),
    st.text(max_size=40))
NAMES = st.one_of(st.sampled_from(["", "a", "fresh", "x" * 2000, "../a", "\x00"]),
                  st.text(max_size=20))
UINT64 = st.one_of(st.sampled_from([0, 1, 64, 100, 4095, 4096, 4097]),
                   st.sampled_from([2**31, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))


@given(name=NAMES, key=KEYS, offset=UINT64, size=UINT64)
@example(name="fresh", key="A", offset=64, size=100).via("a registration that succeeds")
def test_hostile_registrations_get_client_errors_only(channel, kserve, segments, valid_traffic,
                                                      name, key, offset, size):
    key = segments[key][0] if key in segments else key
    request = service_pb2.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset,
                                                            byte_size=size)
    try:
        kserve.SystemSharedMemoryRegister(request, timeout=30)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    check(channel, code, details)
    if code == grpc.StatusCode.OK:
        assert key in (segments["A"][0], segments["OUT"][0]) and offset + size <= SEGMENT_BYTES
        status = kserve.SystemSharedMemoryStatus(
            service_pb2.SystemSharedMemoryStatusRequest(name=name)).regions[name]
        assert (status.key, status.offset, status.byte_size) == (key, offset, size)
        kserve.SystemSharedMemoryUnregister(
            service_pb2.SystemSharedMemoryUnregisterRequest(name=name))
    elif name in REGIONS:
        assert code == grpc.StatusCode.ALREADY_EXISTS or details
    # The fixture's regions are never replaced or dropped by a refused registration.
    regions = kserve.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest())
    assert set(regions.regions) == set(REGIONS)


PARAMETER = st.one_of(
    st.builds(lambda v: service_pb2.InferParameter(int64_param=v),
              st.one_of(st.integers(-2**63, 2**63 - 1), st.sampled_from([0, 64, -64, 4032]))),
    st.builds(lambda v: service_pb2.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: service_pb2.InferParameter(string_param=v), st.text(max_size=8)),
    st.builds(lambda v: service_pb2.InferParameter(bool_param=v), st.booleans()),
)


@st.composite
def placements(draw, regions: list[str]):
    """Where a tensor of the simple model goes: (region, offset, size, parameters) or None for
    the message; parameters are drawn hostile about half the time."""
    if draw(st.integers(0, 3)) == 0:
        return None
    region = draw(st.sampled_from(regions + ["nope", ""]) | st.text(max_size=6))
    offset = draw(st.sampled_from([0, 64, 96, 4032, 4096, 3999, 1000]) | st.integers(0, 5000))
    size = draw(st.sampled_from([64, 64, 63, 65, 0, 4096]))
    params = {"shared_memory_region": service_pb2.InferParameter(string_param=region),
              "shared_memory_byte_size": service_pb2.InferParameter(int64_param=size),
              "shared_memory_offset": service_pb2.InferParameter(int64_param=offset)}
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(params) + ["classification"]))
        params[key] = draw(PARAMETER)
        if draw(st.booleans()):
            del params[key]
    return region, offset, size, params


@st.composite
def shm_requests(draw):
    request = service_pb2.ModelInferRequest(model_name="simple", id="hostile")
    inputs = [draw(placements(["a", "a_tail", "b"])) for _ in range(2)]
    raw = []
    for name, placement in zip(("INPUT0", "INPUT1"), inputs):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        if placement is None:
            raw.append(np.arange(16, dtype=np.int32).tobytes())
        else:
            for key, value in placement[3].items():
                tensor.parameters[key].CopyFrom(value)
    request.raw_input_contents.extend(raw)
    outputs = []
    for name in draw(st.permutations(["OUTPUT0", "OUTPUT1"]))[:draw(st.integers(0, 2))]:
        placement = draw(placements(["out", "a"]))
        wanted = request.outputs.add(name=name)
        if placement is not None:
            for key, value in placement[3].items():
                wanted.parameters[key].CopyFrom(value)
        outputs.append((name, placement))
    return request, inputs, outputs


def region_bytes(segments, before: dict, region: str, offset: int, size: int) -> bytes:
    segment, start, _ = REGIONS[region]
    return before[segment][start + offset:start + offset + size]


@given(case=shm_requests())
def test_hostile_shared_memory_requests_read_and_write_only_what_they_name(
        channel, kserve, segments, valid_traffic, case):
    request, inputs, outputs = case
    note(str(request)[:3000])
    before = {segment: segment_bytes(segments, segment) for segment in segments}
    try:
        response = kserve.ModelInfer(request, timeout=30)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        response, code, details = None, exc.code(), exc.details()
    check(channel, code, details)
    after = {segment: segment_bytes(segments, segment) for segment in segments}
    if code != grpc.StatusCode.OK:
        assert after == before, "a refused request changed a client's memory"
        return
    # It succeeded: each input came from exactly the bytes its parameters named...
    values = []
    for placement in inputs:
        if placement is None:
            values.append(np.arange(16, dtype=np.int32))
        else:
            region, offset, size, params = placement
            assert params["shared_memory_region"].string_param in REGIONS
            data = region_bytes(segments, before, params["shared_memory_region"].string_param,
                                params["shared_memory_offset"].int64_param
                                if "shared_memory_offset" in params else 0, 64)
            values.append(np.frombuffer(data, np.int32))
    expected = {"OUTPUT0": values[0] + values[1], "OUTPUT1": values[0] - values[1]}
    # ...and each output went where it was asked, the rest of the memory untouched.
    returned = {o.name: i for i, o in enumerate(response.outputs)}
    written = dict(before)
    for name, placement in outputs:
        if placement is None or "shared_memory_region" not in placement[3]:
            raw = response.raw_output_contents[returned[name]]
            np.testing.assert_array_equal(np.frombuffer(raw, np.int32), expected[name])
            continue
        params = placement[3]
        region = params["shared_memory_region"].string_param
        segment, start, _ = REGIONS[region]
        at = start + (params["shared_memory_offset"].int64_param
                      if "shared_memory_offset" in params else 0)
        assert response.raw_output_contents[returned[name]] == b""
        data = bytearray(written[segment])
        data[at:at + 64] = expected[name].tobytes()
        written[segment] = bytes(data)
    assert after == written
