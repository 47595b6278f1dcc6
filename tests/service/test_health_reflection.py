"""Standard gRPC health service and server reflection, as generic gRPC tools use them."""

from __future__ import annotations

import json

import grpc
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from onnx_builders import affine_config, affine_graph, write_model
from servers import http_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def server(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    write_model(tmp_path, "labels", affine_graph(1.0, 0.0), affine_config(
        task={"kind": "classifier", "labels": ["a", "b", "c", "d"], "input_scaling": {"std": 0.5}}))
    return server_factory(tmp_path)


def check(channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_overall_and_per_model(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        assert check(channel, "") == SERVING
        assert check(channel, "inference.GRPCInferenceService") == SERVING
        assert check(channel, "affine") == SERVING
        assert check(channel, "labels") == SERVING
        assert check(channel, "onnx-serve:live") == SERVING
        with pytest.raises(grpc.RpcError) as info:
            check(channel, "no-such-model")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        with triton.InferenceServerClient(server.grpc_address) as client:
            client.unload_model("affine")
            assert check(channel, "affine") == NOT_SERVING
            assert check(channel, "") == NOT_SERVING  # a startup model is missing
            # Not ready, but alive: a liveness probe must not restart this pod.
            assert check(channel, "onnx-serve:live") == SERVING
            assert http_status(f"{server.http_url}/v2/health/live") == 200
            assert http_status(f"{server.http_url}/v2/health/ready") == 503
            client.load_model("affine")
            assert check(channel, "affine") == SERVING
            assert check(channel, "") == SERVING


def test_reflection_lists_services_and_drives_a_call(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= services

        # Build request and response types from reflection alone, as grpcurl does, and read the
        # provider and task metadata parameters that the stock client does not know about.
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert {"ModelInfer", "ModelMetadata", "RepositoryModelLoad", "ModelStatistics"} <= {
            m.name for m in service.methods}

        def call(method_name: str, **fields):
            method = service.FindMethodByName(method_name)
            request_type = message_factory.GetMessageClass(method.input_type)
            response_type = message_factory.GetMessageClass(method.output_type)
            rpc = channel.unary_unary(
                f"/inference.GRPCInferenceService/{method_name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            return rpc(request_type(**fields), timeout=10)

        server_meta = call("ServerMetadata")
        assert server_meta.parameters["execution_provider"].string_param == "CPUExecutionProvider"
        model_meta = call("ModelMetadata", name="labels")
        params = model_meta.parameters
        assert params["execution_provider"].string_param == "CPUExecutionProvider"
        assert params["task_kind"].string_param == "classifier"
        assert params["max_batch_size"].int64_param == 8
        assert json.loads(params["labels"].string_param) == ["a", "b", "c", "d"]
        assert json.loads(params["input_scaling"].string_param)["std"] == 0.5
