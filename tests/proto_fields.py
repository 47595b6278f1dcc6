"""Message layouts for comparing our protobuf definitions with Triton's (no generated imports
here, so a child process can load it next to our own stubs)."""


def message_fields(descriptor, seen=None) -> dict:
    """{message name: {field name: (number, type)}} for a message and every message it holds."""
    seen = {} if seen is None else seen
    if descriptor.full_name in seen:
        return seen
    seen[descriptor.full_name] = {f.name: (f.number, f.type) for f in descriptor.fields}
    for field in descriptor.fields:
        if field.message_type is not None:
            message_fields(field.message_type, seen)
    return seen


EXTENSION_MESSAGES = [
    "ModelStreamInferResponse", "SystemSharedMemoryStatusRequest",
    "SystemSharedMemoryStatusResponse", "SystemSharedMemoryRegisterRequest",
    "SystemSharedMemoryRegisterResponse", "SystemSharedMemoryUnregisterRequest",
    "SystemSharedMemoryUnregisterResponse", "CudaSharedMemoryStatusRequest",
    "CudaSharedMemoryStatusResponse", "CudaSharedMemoryRegisterRequest",
    "CudaSharedMemoryRegisterResponse", "CudaSharedMemoryUnregisterRequest",
    "CudaSharedMemoryUnregisterResponse",
]


def extension_layout(module) -> tuple[dict, dict]:
    """(the fields of EXTENSION_MESSAGES, each RPC's messages and streaming) of a
    grpc_service_pb2 module."""
    fields = {}
    for name in EXTENSION_MESSAGES:
        fields.update(message_fields(module.DESCRIPTOR.message_types_by_name[name]))
    service = module.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rpcs = {m.name: [m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                     m.server_streaming] for m in service.methods}
    return fields, rpcs
