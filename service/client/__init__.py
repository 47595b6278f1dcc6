"""Client library and command line for the task API."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.client.client import AsyncTaskClient, ChannelOptions, TaskClient, to_pil

__all__ = ["AsyncTaskClient", "ChannelOptions", "TaskClient", "to_pil"]


def __getattr__(name: str):
    # Loaded on first use (PEP 562), so that `onnx-client --help` and a mistake on its command
    # line are answered without importing gRPC and NumPy: 0.1 s of CPU instead of 0.5 s.
    if name in __all__:
        from service.client import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
