"""System shared memory regions (Triton's system shared memory extension), for every front end.

A client creates a POSIX shared-memory segment (`shm_open(key)`: the file /dev/shm/<key> on Linux,
as tritonclient.utils.shared_memory makes them), registers a byte range of it under a name, and
then names that region in requests: inputs are read from it and outputs written into it, so large
tensors never travel in the message.

The segment is opened with os.open and mapped with mmap, never through
multiprocessing.shared_memory, whose resource tracker would unlink the client's segment when this
process exits. Whatever a client sends, the server never touches memory outside a registered
range:
- the key names a file directly under /dev/shm (no path, no symlink, a regular file);
- a registered range lies inside the segment's size, and the segment is checked again on every
  use, so one the client shrank since (whose pages past the end would fault) is refused;
- every request range is bounds-checked against its region.

Lifetime without locks or counts: a request holds memoryview slices of the mapping, which pin it
(the buffer protocol refuses to close an mmap with views alive). Unregistering forgets the region
and closes its mapping when no request holds it; otherwise the last request to let go unmaps it,
as CPython frees the mmap with its last view. A request in flight therefore finishes with its
region intact; the next one naming it gets NOT_FOUND. Everything runs on the event loop thread.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from service.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted

SHM_ROOT = Path("/dev/shm")
# CUDA shared memory is not offered: registering is refused with this; its status and unregister
# calls answer truthfully that no CUDA region exists, since clients (Triton's examples,
# perf_analyzer) unregister every CUDA region before they start.
CUDA_REFUSAL = ("CUDA shared memory is not supported by this server; system shared memory is "
                "(register a POSIX shared-memory segment with SystemSharedMemoryRegister)")
MAX_REGIONS = 1024  # each holds a file descriptor and a mapping
_MAX_KEY_BYTES = 255  # NAME_MAX


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass
class _Region:
    status: RegionStatus
    fd: int
    mapping: mmap.mmap
    start: int  # where the registered range begins in `mapping` (mmap offsets are page-aligned)

    def close(self) -> None:
        os.close(self.fd)
        try:
            self.mapping.close()
        except BufferError:
            pass  # a request still holds views: CPython unmaps it with the last of them


def _file_name(key: str) -> str:
    """The segment's file under /dev/shm: the key without its leading slashes (as glibc's
    shm_open reads it), refused unless it is one plain file name."""
    name = key.lstrip("/")
    if (not name or "/" in name or "\0" in name or name in (".", "..")
            or len(name.encode()) > _MAX_KEY_BYTES):
        raise InvalidArgument(f"key {key!r}: expected a POSIX shared-memory key such as "
                              "'/input_data', one name of at most 255 bytes")
    return name


class SharedMemoryRegistry:
    """The regions registered with this server process, by name."""

    def __init__(self, root: Path = SHM_ROOT, max_regions: int = MAX_REGIONS):
        self._root = root
        self._max_regions = max_regions
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: object, offset: object, byte_size: object) -> None:
        """Map `byte_size` bytes of segment `key` from `offset` as region `name` (the values as
        a client sent them: checked here for every front end)."""
        if not name:
            raise InvalidArgument("name: a shared-memory region needs a name")
        if not isinstance(key, str):
            raise InvalidArgument(f"shared memory region '{name}': key must be a string, got "
                                  f"{type(key).__name__}")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidArgument(f"shared memory region '{name}': {field} must be an "
                                      f"integer, got {type(value).__name__} {value!r}")
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' is already registered; "
                                "unregister it first")
        if len(self._regions) >= self._max_regions:
            raise ResourceExhausted(f"shared memory region '{name}': {self._max_regions} regions "
                                    "are registered, the most this server keeps; unregister some")
        if offset < 0 or byte_size < 1:
            raise InvalidArgument(f"shared memory region '{name}': offset must be >= 0 and "
                                  f"byte_size >= 1, got offset {offset}, byte_size {byte_size}")
        path = self._root / _file_name(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"shared memory region '{name}': no shared-memory segment with key "
                           f"{key!r} on the server's host") from None
        except OSError as exc:
            raise InvalidArgument(f"shared memory region '{name}': cannot open segment {key!r}: "
                                  f"{exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(f"shared memory region '{name}': {key!r} is not a "
                                      "shared-memory segment")
            if offset + byte_size > info.st_size:
                raise InvalidArgument(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} "
                    f"runs past the end of segment {key!r} ({info.st_size} bytes)")
            start = offset % mmap.ALLOCATIONGRANULARITY
            mapping = mmap.mmap(fd, start + byte_size, offset=offset - start)
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), fd, mapping,
                                      start)

    def unregister(self, name: str = "") -> None:
        """Forget region `name` (every region when empty); one that is not registered is no
        error, as in Triton."""
        names = [name] if name else list(self._regions)
        for region in [self._regions.pop(n) for n in names if n in self._regions]:
            region.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        if not name:
            return [region.status for region in self._regions.values()]
        return [self._get(name, "").status]

    def view(self, name: str, offset: int, byte_size: int, tensor: str) -> memoryview:
        """`byte_size` bytes at `offset` in region `name`, for `tensor` (e.g. "input 'x'", which
        errors name): a writable view of the client's memory that keeps it mapped."""
        region = self._get(name, f"{tensor}: ")
        size = region.status.byte_size
        if offset < 0 or byte_size < 0:
            raise InvalidArgument(f"{tensor}: shared_memory_offset and shared_memory_byte_size "
                                  f"must be >= 0, got {offset} and {byte_size}")
        if offset >= size:
            raise InvalidArgument(f"{tensor}: shared_memory_offset {offset} is past the end of "
                                  f"shared memory region '{name}' ({size} bytes)")
        if offset + byte_size > size:
            raise InvalidArgument(
                f"{tensor}: shared_memory_offset {offset} + shared_memory_byte_size {byte_size} "
                f"runs past the end of shared memory region '{name}' ({size} bytes)")
        actual = os.fstat(region.fd).st_size
        if region.status.offset + size > actual:
            raise InvalidArgument(
                f"{tensor}: shared memory region '{name}' was registered over "
                f"{region.status.offset + size} bytes of segment {region.status.key!r}, which "
                f"now has {actual}; register it again")
        start = region.start + offset
        return memoryview(region.mapping)[start:start + byte_size]

    def close(self) -> None:
        """At shutdown: unregister everything."""
        self.unregister()

    @staticmethod
    def cuda_status(name: str) -> list:
        """No CUDA region is ever registered: none for all, NOT_FOUND for one by name."""
        if name:
            raise NotFound(f"CUDA shared memory region '{name}' is not registered: {CUDA_REFUSAL}")
        return []

    def _get(self, name: str, prefix: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"{prefix}shared memory region '{name}' is not registered")
        return region
