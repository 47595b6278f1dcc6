"""Property tests of the ModelInfer wire codec (`service.grpc.kserve_codec`).

They import the service's own `inference` protobuf package, which cannot share a process with
tritonclient's: test_kserve_codec.py runs this file in a pytest process of its own.
"""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings, strategies as st

from service._proto import grpc_service_pb2 as pb
from service.core.datatypes import DATATYPES
from service.core.outputs import OutputTensor
from service.core.shared_memory import SharedMemoryRegistry
from service.grpc.kserve_codec import (
    decode_inputs, infer_response_parts, split_infer_request, stream_response_parts,
)

NAMES = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=3)


@st.composite
def tensors(draw):
    """(name, datatype, array, raw bytes) with random contents of any datatype."""
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    out = []
    for name in names:
        datatype = draw(st.sampled_from(sorted(DATATYPES)))
        shape = draw(SHAPES)
        count = int(np.prod(shape))
        if datatype == "BYTES":
            elements = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
            array = np.empty(count, dtype=object)
            array[:] = elements
            raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
            out.append((name, datatype, array.reshape(shape), raw))
            continue
        dtype = DATATYPES[datatype].numpy
        raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        out.append((name, datatype, np.frombuffer(raw, dtype).reshape(shape), raw))
    return out


def wire(head: pb.ModelInferRequest, raws: list[bytes], order: list[int]) -> bytes:
    """The request as protobuf allows it on the wire: the head's fields and one
    raw_input_contents field per raw, in their order, the i-th placed before head field
    `sorted(order)[i]` (or after the last)."""
    head_fields = [pb.ModelInferRequest(model_name=head.model_name).SerializeToString(),
                   pb.ModelInferRequest(id=head.id).SerializeToString(),
                   pb.ModelInferRequest(inputs=head.inputs).SerializeToString(),
                   pb.ModelInferRequest(outputs=head.outputs).SerializeToString()]
    before = sorted(order[:len(raws)])
    parts, raw_index = [], 0
    for slot in range(len(head_fields) + 1):
        while raw_index < len(raws) and min(before[raw_index], len(head_fields)) == slot:
            parts.append(pb.ModelInferRequest(raw_input_contents=[raws[raw_index]])
                         .SerializeToString())
            raw_index += 1
        if slot < len(head_fields):
            parts.append(head_fields[slot])
    return b"".join(parts)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(tensors(), NAMES, st.text(max_size=8), st.lists(NAMES, max_size=3, unique=True),
       st.lists(st.integers(0, 8), min_size=4, max_size=4))
def test_split_request_round_trips_in_any_field_order(inputs, model, request_id, outputs, order):
    head = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, datatype, array, _ in inputs:
        head.inputs.add(name=name, datatype=datatype, shape=array.shape)
    for name in outputs:
        head.outputs.add(name=name)
    raws = [raw for *_, raw in inputs]

    request, raw = split_infer_request(wire(head, raws, order))

    assert request == head  # everything but the raw contents, as protobuf parses it
    assert [bytes(view) for view in raw] == raws
    arrays, declared = decode_inputs(request, raw, SharedMemoryRegistry())
    for name, datatype, array, _ in inputs:
        assert declared[name] == datatype
        assert arrays[name].dtype == array.dtype and arrays[name].shape == array.shape
        assert arrays[name].tolist() == array.tolist()


@settings(max_examples=80, deadline=None, derandomize=True)
@given(tensors(), NAMES, st.text(max_size=8))
def test_response_bytes_parse_as_the_response_protobuf_would_write(outputs, model, request_id):
    head = pb.ModelInferResponse(model_name=model, model_version="3", id=request_id)
    # The last output is written to shared memory: described, with an empty raw entry.
    tensors = [OutputTensor(name, datatype, array.shape, array if i < len(outputs) - 1 else None)
               for i, (name, datatype, array, _) in enumerate(outputs)]

    parts = infer_response_parts(head, tensors)
    response = pb.ModelInferResponse.FromString(b"".join(parts))

    expected = pb.ModelInferResponse(model_name=model, model_version="3", id=request_id)
    for i, (name, datatype, array, raw) in enumerate(outputs):
        expected.outputs.add(name=name, datatype=datatype, shape=array.shape)
        expected.raw_output_contents.append(raw if i < len(outputs) - 1 else b"")
    assert response == expected
    streamed = pb.ModelStreamInferResponse.FromString(b"".join(stream_response_parts(parts)))
    assert streamed == pb.ModelStreamInferResponse(infer_response=expected)
    failed = pb.ModelStreamInferResponse.FromString(
        b"".join(stream_response_parts(None, "input 'x': é", request_id)))
    assert failed == pb.ModelStreamInferResponse(
        error_message="input 'x': é", infer_response=pb.ModelInferResponse(id=request_id))
