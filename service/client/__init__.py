"""Client library and command line for the task API."""

from service.client.client import AsyncTaskClient, ChannelOptions, TaskClient, to_pil

__all__ = ["AsyncTaskClient", "ChannelOptions", "TaskClient", "to_pil"]
