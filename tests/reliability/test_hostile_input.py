"""Hostile input, property-based: whatever a client sends over either API, the answer is OK or a
client-error status (never UNKNOWN or INTERNAL), and the server still answers a health check.

`make test` runs a few hundred cases; HYPOTHESIS_PROFILE=soak runs thousands. The cases at the end
pin two bugs these properties found (fixed in the server).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib

import grpc
import numpy as np
import pytest
from hypothesis import assume, event, example, given, note, settings, strategies as st
from onnx import TensorProto
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from servers import serving
from onnx_builders import (
    affine_config, affine_graph, identity_graph, simple_config, simple_graph, write_model,
    write_task_models,
)
from reliability_support import CLIENT_STATUSES, assert_healthy
from service._proto import task_service_pb2 as pb
from service._proto import task_service_pb2_grpc as pb_grpc
from service.core.datatypes import CONTENTS_FIELDS, DATATYPES

MAX_MESSAGE = 1_000_000
MAX_PIXELS = 128 * 128

NUMPY = {name: row.numpy for name, row in DATATYPES.items()}
JUNK_DATATYPES = ["BYTES", "FP8", "", "fp32", "INT128", "FP32 ", "STRING"]
CONTENTS = {name: row.contents_field for name, row in DATATYPES.items() if row.contents_field}
IDENTITIES = {
    "ident_u8": ("UINT8", TensorProto.UINT8), "ident_bool": ("BOOL", TensorProto.BOOL),
    "ident_fp16": ("FP16", TensorProto.FLOAT16), "ident_i64": ("INT64", TensorProto.INT64),
    "ident_f64": ("FP64", TensorProto.DOUBLE), "ident_i8": ("INT8", TensorProto.INT8),
}
# (inputs, outputs, batched) per tensor model; -1: a variable dim.
SIGNATURES = {
    "affine": ([("x", "FP32", [4])], ["y"], True),
    "simple": ([("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])], ["OUTPUT0", "OUTPUT1"],
               True),
    "nobatch": ([("x", "FP32", [4])], ["y"], False),
    "sr": ([("low_res", "FP32", [1, -1, -1])], ["high_res"], True),
    "brightness": ([("images", "FP32", [1, 8, 8])], ["probabilities"], True),
    "cgen": ([("latent", "FP32", [4]), ("class_label", "INT64", [1])], ["images"], True),
    **{name: ([("x", datatype, [4])], ["y"], True) for name, (datatype, _) in IDENTITIES.items()},
}
TASK_MODELS = ["brightness", "gen", "cgen", "enc", "dec", "ae", "sr"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("hostile-repo")
    write_task_models(repo)
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config())
    write_model(repo, "simple", simple_graph(), simple_config())
    write_model(repo, "nobatch", affine_graph(1.0, 0.0, batch_axis=False),
                affine_config(max_batch_size=0, dynamic_batching={"enabled": False}))
    for name, (datatype, elem_type) in IDENTITIES.items():
        write_model(repo, name, identity_graph(elem_type), {
            "max_batch_size": 8, "inputs": [{"name": "x", "datatype": datatype, "shape": [4]}],
            "outputs": [{"name": "y", "datatype": datatype, "shape": [4]}]})
    yield from serving(repo, env={
        "ONNXSERVE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
        "ONNXSERVE_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
        "ONNXSERVE_MAX_IMAGES_PER_REQUEST": "8", "ONNXSERVE_MAX_GENERATE_COUNT": "16",
        "ONNXSERVE_SR_TILE_SIZE": "16", "ONNXSERVE_SR_TILE_OVERLAP": "4"})


@pytest.fixture(scope="module")
def channel(server):
    options = [("grpc.max_send_message_length", 4 * MAX_MESSAGE),
               ("grpc.max_receive_message_length", 4 * MAX_MESSAGE)]
    with grpc.insecure_channel(server.grpc_address, options=options) as channel:
        yield channel


@pytest.fixture(scope="module")
def kserve(channel):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def tasks(channel):
    return pb_grpc.TaskServiceStub(channel)


def call_code(method, request, stream: bool = False) -> tuple[grpc.StatusCode, str]:
    try:
        if stream:
            for _ in method(request, timeout=60):
                pass
        else:
            method(request, timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def check(channel, code: grpc.StatusCode, details: str) -> None:
    note(f"-> {code.name}: {details}")
    event(code.name)
    assert code in CLIENT_STATUSES, f"{code.name}: {details}"
    assert_healthy(channel)


# -- the tensor API ------------------------------------------------------------------------------

DIMS = st.one_of(st.integers(0, 6), st.sampled_from([-1, -2**63, 2**31, 2**62, 2**63 - 1, 0]))
VERSIONS = st.one_of(
    st.sampled_from(["", "", "", "1", "2", "0", "-1", "abc", "1e3", " 1", "01",
                     "99999999999999999999"]),
    st.text(alphabet="0123456789", max_size=25))
PARAMETER_VALUES = st.one_of(
    st.builds(lambda v: service_pb2.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: service_pb2.InferParameter(int64_param=v),
              st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda v: service_pb2.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: service_pb2.InferParameter(double_param=v), st.floats()),
    st.builds(lambda v: service_pb2.InferParameter(string_param=v), st.text(max_size=20)),
)
PARAMETERS = st.dictionaries(
    st.sampled_from(["priority", "timeout", "sequence_id", "binary_data", "classification",
                     "unknown", ""]) | st.text(max_size=8), PARAMETER_VALUES, max_size=3)
FLOAT_SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e38, -1e38, 65504.0, 1e-45]


def typed_values(draw, field: str, count: int) -> list:
    """`count` values for a typed contents field, each within what protobuf can carry."""
    element = {
        "bool_contents": st.booleans(),
        "int_contents": st.integers(-2**31, 2**31 - 1),
        "int64_contents": st.integers(-2**63, 2**63 - 1),
        "uint_contents": st.integers(0, 2**32 - 1),
        "uint64_contents": st.integers(0, 2**64 - 1),
        "fp32_contents": st.floats(width=32) | st.sampled_from(FLOAT_SPECIALS),
        "fp64_contents": st.floats() | st.sampled_from(FLOAT_SPECIALS),
        "bytes_contents": st.binary(max_size=8),
    }[field]
    if count <= 16:
        return draw(st.lists(element, min_size=count, max_size=count))
    return [draw(element)] * count  # long lists: one drawn value, repeated


def raw_bytes(draw, datatype: str, count: int, length: int) -> bytes:
    """Raw contents of `length` bytes; for float types often NaN/Inf-laden, else random."""
    dtype = NUMPY.get(datatype)
    floats = dtype is not None and np.dtype(dtype).kind == "f"
    if floats and length == count * np.dtype(dtype).itemsize and draw(st.booleans()):
        specials = draw(st.lists(st.sampled_from(FLOAT_SPECIALS), min_size=1, max_size=4))
        with np.errstate(over="ignore"):  # 1e38 as FP16 is +inf: wanted
            values = np.resize(np.array(specials, np.float64).astype(dtype), count)
        return values.tobytes()
    if length <= 512:
        return draw(st.binary(min_size=length, max_size=length))
    return np.random.default_rng(draw(st.integers(0, 2**32))).bytes(length)


def hostility(draw) -> "callable":
    """A per-case level (0: a valid request, 100: every choice hostile); the returned
    `bad()` answers, choice by choice, whether to make this one hostile. Low levels give
    requests with one or two faults deep inside, which reach the batcher and the runtime."""
    level = draw(st.sampled_from([0, 0, 4, 10, 30, 100]))
    return lambda: draw(st.integers(0, 99)) < level


@st.composite
def tensor_requests(draw) -> service_pb2.ModelInferRequest:
    bad = hostility(draw)
    model = draw(st.text(max_size=12)) if bad() else draw(st.sampled_from(sorted(SIGNATURES)))
    inputs, outputs, batched = SIGNATURES.get(model, SIGNATURES["affine"])
    request = service_pb2.ModelInferRequest(
        model_name=model, model_version=draw(VERSIONS) if bad() else "",
        id=draw(st.text(max_size=12)))
    if bad():
        for key, value in draw(PARAMETERS).items():
            request.parameters[key].CopyFrom(value)

    specs = list(inputs)
    if bad():
        edit = draw(st.sampled_from(["drop", "extra", "duplicate"]))
        if edit == "drop":
            specs.pop(draw(st.integers(0, len(specs) - 1)))
        elif edit == "extra":
            specs.append((draw(st.text(max_size=6)), "FP32", [4]))
        else:
            specs.append(specs[0])
    batch = draw(st.sampled_from([0, 9, 64, 2**31, -1]) if bad() else st.sampled_from([1, 2, 8]))
    mode = draw(st.sampled_from(["contents", "none"])) if bad() else \
        draw(st.sampled_from(["raw", "raw", "contents"]))
    raws = []
    for name, datatype, dims in specs:
        if bad():
            name = draw(st.sampled_from(["", "x", "y", "images"]) | st.text(max_size=6))
        if bad():
            datatype = draw(st.sampled_from(sorted(NUMPY) + JUNK_DATATYPES))
        if bad():
            shape = draw(st.lists(DIMS, max_size=5))
        else:
            variable = st.integers(0, 40) if bad() else st.integers(1, 24)
            item = [d if d != -1 else draw(variable) for d in dims]
            shape = ([batch] if batched else []) + item
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if bad():
            for key, value in draw(PARAMETERS).items():
                tensor.parameters[key].CopyFrom(value)
        count = math.prod(shape) if all(d >= 0 for d in shape) else None
        itemsize = np.dtype(NUMPY.get(datatype, np.float32)).itemsize
        if mode == "raw":
            fits = count is not None and count * itemsize <= 200_000
            length = count * itemsize if fits and not bad() else draw(st.integers(0, 64))
            raws.append(raw_bytes(draw, datatype, count or 0, length))
        elif mode == "contents":
            field = CONTENTS.get(datatype, "fp32_contents")
            if bad():
                field = draw(st.sampled_from(CONTENTS_FIELDS))
            fits = count is not None and count <= 50_000
            n = count if fits and not bad() else draw(st.integers(0, 20))
            getattr(tensor.contents, field).extend(typed_values(draw, field, n))
    if raws and bad():
        if draw(st.booleans()):
            raws.pop()
        else:
            raws.append(b"\0" * 16)
    request.raw_input_contents.extend(raws)
    names = st.sampled_from(outputs + ["", "nope"]) if bad() else st.sampled_from(outputs)
    for name in draw(st.lists(names, max_size=3, unique=not bad())):
        out = request.outputs.add(name=name)
        if bad():
            for key, value in draw(PARAMETERS).items():
                out.parameters[key].CopyFrom(value)
    return request


@given(request=tensor_requests())
@example(request=service_pb2.ModelInferRequest(model_name="affine")).via("no inputs at all")
def test_hostile_tensor_requests_get_client_errors_only(channel, kserve, request):
    note(str(request)[:2000])
    code, details = call_code(kserve.ModelInfer, request)
    check(channel, code, details)


NAMES = st.one_of(
    st.sampled_from(["../x", "..", ".", "./affine", "/etc/passwd", "affine/../affine", "~root",
                     "%2e%2e%2fx", "affine\n", "affine\x00", "a" * 300, "\\..\\x", "AFFINE",
                     "affine ", "", "CON", "x" * 128, ".hidden", "-rf"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
)


@given(name=NAMES, version=VERSIONS, rpc=st.sampled_from(
    ["metadata", "ready", "statistics", "load", "unload", "describe", "index"]))
@settings(max_examples=1500 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 60)
def test_hostile_model_names_and_versions_get_client_errors_only(
        channel, kserve, tasks, name, version, rpc):
    assume(name not in SIGNATURES and name not in TASK_MODELS or rpc not in ("load", "unload"))
    calls = {
        "metadata": (kserve.ModelMetadata,
                     service_pb2.ModelMetadataRequest(name=name, version=version)),
        "ready": (kserve.ModelReady, service_pb2.ModelReadyRequest(name=name, version=version)),
        "statistics": (kserve.ModelStatistics,
                       service_pb2.ModelStatisticsRequest(name=name, version=version)),
        "load": (kserve.RepositoryModelLoad,
                 service_pb2.RepositoryModelLoadRequest(model_name=name)),
        "unload": (kserve.RepositoryModelUnload,
                   service_pb2.RepositoryModelUnloadRequest(model_name=name)),
        "describe": (tasks.DescribeModel, pb.DescribeModelRequest(model=name, version=version)),
        "index": (kserve.RepositoryIndex,
                  service_pb2.RepositoryIndexRequest(repository_name=name, ready=bool(version))),
    }
    method, request = calls[rpc]
    check(channel, *call_code(method, request))


# -- the task API ----------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, depth: int = 8, colour: int = 0,
                  idat: bytes = b"") -> bytes:
    """A PNG whose header declares any size (a valid CRC), with a tiny or no pixel stream."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header)
    if idat:
        chunks += png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int, channels: int = 1) -> bytes:
    """A JPEG whose SOF0 header declares width x height (at most 65535 each), with no scan."""
    components = b"".join(bytes([i + 1, 0x11, 0]) for i in range(channels))
    sof = struct.pack(">BHHB", 8, height, width, channels) + components
    quant = b"\x00" + bytes(range(1, 65))
    return (b"\xff\xd8" + b"\xff\xdb" + struct.pack(">H", len(quant) + 2) + quant
            + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9")


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK", "YCbCr"]


@st.composite
def encoded_images(draw, damage: bool = True) -> bytes:
    mode = draw(st.sampled_from(MODES))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    image = Image.new(mode, (width, height))
    if mode in ("1", "L", "P"):
        image.putdata(list(rng.integers(0, 256, width * height)))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else draw(st.sampled_from(["PNG", "JPEG"]))
    if fmt == "JPEG" and mode not in ("L", "RGB", "CMYK", "YCbCr"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none"] * 3 + ["truncate", "flip", "append", "splice"])) \
        if damage else "none"
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        data = bytes(data)
    elif damage == "append":
        data += draw(st.binary(max_size=64))
    elif damage == "splice":
        start = draw(st.integers(0, len(data)))
        data = data[:start] + draw(st.binary(max_size=32)) + data[start + 8:]
    return data


HUGE_SIDES = st.sampled_from([0, 1, 100_000, 65_535, 2**31 - 1, 2**32 - 1, 129, 128])
HEADER_IMAGES = st.one_of(
    st.builds(png_declaring, HUGE_SIDES, HUGE_SIDES, st.sampled_from([1, 8, 16]),
              st.sampled_from([0, 2, 3, 4, 6, 7]),
              st.sampled_from([b"", zlib.compress(b"\0" * 64), b"\x78\x9c garbage"])),
    st.builds(jpeg_declaring, st.sampled_from([0, 1, 65_535, 10_000]),
              st.sampled_from([0, 1, 65_535, 10_000]), st.sampled_from([1, 3, 4])),
)
RAW_IMAGES = st.builds(
    lambda h, w, c, extra, seed: pb.Image(raw=pb.RawImage(
        height=h, width=w, channels=c,
        pixels=np.random.default_rng(seed).bytes(max(0, min(h * w * c, 100_000) + extra)))),
    st.sampled_from([0, 1, 2, 8, 16, 100_000, 2**32 - 1]),
    st.sampled_from([0, 1, 3, 8, 16, 100_000, 2**32 - 1]),
    st.sampled_from([0, 1, 2, 3, 4, 5, 255, 2**32 - 1]),
    st.sampled_from([0, 0, 0, -1, 1]), st.integers(0, 2**32))
IMAGES = st.one_of(
    encoded_images().map(lambda data: pb.Image(encoded=data)),
    HEADER_IMAGES.map(lambda data: pb.Image(encoded=data)),
    st.binary(max_size=64).map(lambda data: pb.Image(encoded=data)),
    RAW_IMAGES,
    st.just(pb.Image()),
)
FLOATS = st.floats(width=32) | st.sampled_from(FLOAT_SPECIALS)
FORMATS = st.sampled_from([pb.PNG, pb.RAW, 7])  # 7: an enum value this server does not know
# The models each RPC can serve; hostile cases pick any name.
RPC_MODELS = {"Classify": ["brightness"], "Generate": ["gen", "cgen"], "Encode": ["enc"],
              "SuperResolve": ["sr"], "SuperResolveStream": ["sr"], "Decode": ["dec", "gen"],
              "Reconstruct": ["ae"]}
ANY_MODEL = st.sampled_from(TASK_MODELS + ["affine", "nobatch", "nope", "", "../gen"])


@st.composite
def valid_images(draw) -> pb.Image:
    """A small, sound image: PNG/JPEG of any mode, or raw pixels."""
    if draw(st.booleans()):
        h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        c = draw(st.sampled_from([1, 3, 4]))
        pixels = np.random.default_rng(draw(st.integers(0, 2**32))).bytes(h * w * c)
        return pb.Image(raw=pb.RawImage(height=h, width=w, channels=c, pixels=pixels))
    return pb.Image(encoded=draw(encoded_images(damage=False)))


@st.composite
def task_requests(draw):
    bad = hostility(draw)
    rpc = draw(st.sampled_from(sorted(RPC_MODELS)))
    model = draw(ANY_MODEL) if bad() else draw(st.sampled_from(RPC_MODELS[rpc]))
    common = {"model": model,
              "version": draw(VERSIONS) if bad() else ""}
    image = (lambda: draw(IMAGES)) if bad() else (lambda: draw(valid_images()))

    def images():
        return [image() for _ in range(draw(st.integers(0, 10) if bad() else st.integers(1, 3)))]

    def latent():
        size = draw(st.integers(0, 6)) if bad() else 4
        values = st.lists(FLOATS, min_size=size, max_size=size) if bad() else \
            st.lists(st.floats(-3, 3, width=32), min_size=size, max_size=size)
        return pb.LatentVector(values=draw(values))

    image_format = draw(FORMATS) if bad() else draw(st.sampled_from([pb.PNG, pb.RAW]))
    if rpc == "Classify":
        top_k = draw(st.sampled_from([4, 2**32 - 1])) if bad() else draw(st.integers(0, 3))
        return rpc, pb.ClassifyRequest(images=images(), top_k=top_k, **common)
    if rpc == "Generate":
        request = pb.GenerateRequest(format=image_format, **common)
        if bad() or model == "cgen":
            request.class_label = draw(st.integers(-2**31, 2**31 - 1)) if bad() else \
                draw(st.integers(0, 2))
        if bad() or draw(st.booleans()):
            request.seed = draw(st.integers(0, 2**64 - 1))
        how = draw(st.sampled_from(["count", "latents", "interpolation"]))
        if how == "count":
            request.count = draw(st.sampled_from([17, 2**32 - 1]) if bad() else st.integers(0, 16))
        elif how == "latents":
            request.latents.extend(latent() for _ in range(
                draw(st.integers(0, 20) if bad() else st.integers(1, 4))))
        else:
            request.interpolation.steps = draw(st.sampled_from([0, 1, 17, 2**32 - 1]) if bad()
                                               else st.integers(2, 16))
            if draw(st.booleans()):
                request.interpolation.start.CopyFrom(latent())
            if draw(st.booleans()):
                request.interpolation.end.CopyFrom(latent())
        return rpc, request
    if rpc in ("SuperResolve", "SuperResolveStream"):
        request = pb.SuperResolveRequest(format=image_format, **common)
        if not bad():
            request.image.CopyFrom(image())
        elif draw(st.booleans()):
            request.image.CopyFrom(draw(IMAGES))
        return rpc, request
    if rpc == "Encode":
        return rpc, pb.EncodeRequest(images=images(), **common)
    if rpc == "Reconstruct":
        return rpc, pb.ReconstructRequest(images=images(), format=image_format, **common)
    count = draw(st.integers(0, 12) if bad() else st.integers(1, 4))
    return rpc, pb.DecodeRequest(latents=[latent() for _ in range(count)], format=image_format,
                                 **common)


@given(case=task_requests())
@example(case=("Classify", pb.ClassifyRequest(
    model="brightness", images=[pb.Image(encoded=png_declaring(100_000, 100_000))])))
@example(case=("Classify", pb.ClassifyRequest(
    model="brightness", images=[pb.Image(encoded=png_declaring(0, 0))])))
@example(case=("SuperResolve", pb.SuperResolveRequest(
    model="sr", image=pb.Image(raw=pb.RawImage(height=4, width=4, channels=2, pixels=b"\0" * 32)))))
def test_hostile_task_requests_get_client_errors_only(channel, tasks, case):
    rpc, request = case
    note(f"{rpc}: {str(request)[:2000]}")
    code, details = call_code(getattr(tasks, rpc), request, stream=rpc.endswith("Stream"))
    check(channel, code, details)


# -- bugs the properties found, pinned -------------------------------------------------------------


@pytest.mark.parametrize("contents", ["raw", "typed"])
def test_zero_element_tensor_with_huge_dim_is_invalid_argument(channel, kserve, contents):
    request = service_pb2.ModelInferRequest(model_name="affine")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2**62, 0])
    if contents == "raw":
        request.raw_input_contents.append(b"")
    else:
        tensor.contents.fp32_contents.extend([])
    code, details = call_code(kserve.ModelInfer, request)
    assert_healthy(channel)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"


@pytest.mark.parametrize("rpc", ["ModelInfer", "ModelMetadata", "ModelReady", "ModelStatistics",
                                 "DescribeModel"])
def test_unicode_digit_version_is_a_client_error(channel, kserve, tasks, rpc):
    requests = {
        "ModelInfer": (kserve.ModelInfer, service_pb2.ModelInferRequest(
            model_name="affine", model_version="²")),
        "ModelMetadata": (kserve.ModelMetadata,
                          service_pb2.ModelMetadataRequest(name="affine", version="²")),
        "ModelReady": (kserve.ModelReady,
                       service_pb2.ModelReadyRequest(name="affine", version="²")),
        "ModelStatistics": (kserve.ModelStatistics,
                            service_pb2.ModelStatisticsRequest(name="affine", version="²")),
        "DescribeModel": (tasks.DescribeModel, pb.DescribeModelRequest(model="gen", version="²")),
    }
    method, request = requests[rpc]
    if rpc == "ModelInfer":
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    code, details = call_code(method, request)
    assert_healthy(channel)
    # ModelReady answers ready=false rather than an error for an unknown version.
    assert code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND} \
        or (rpc == "ModelReady" and code == grpc.StatusCode.OK), f"{code.name}: {details}"
