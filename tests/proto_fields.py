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
