"""Size limits that every front end applies the same way."""

from __future__ import annotations

from service.errors import ResourceExhausted

# What a response may need beyond its tensors' or image's bytes (names, shapes, fields).
MESSAGE_ENVELOPE_BYTES = 4096


def check_response_fits(payload_bytes: int, limit: int, what: str, advice: str) -> None:
    """Refuse a response whose payload cannot fit the message limit, before it is built."""
    if payload_bytes + MESSAGE_ENVELOPE_BYTES > limit:
        raise ResourceExhausted(
            f"{what} needs {payload_bytes} bytes, more than the {limit}-byte message limit; "
            f"{advice}"
        )
