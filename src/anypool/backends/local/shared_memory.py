"""Anonymous shared-memory files (``memfd_create``) for the large buffers of a frame, and the
spare files a process keeps to write the next ones into (see ``framing``).

A file the receiver no longer maps is its own: nobody else holds it (the sender writes it with
write(), never maps it, and closes it once sent). A process that keeps spare files (a worker,
or a parent with a pool open) writes the next large buffer it sends into one of those instead
of a fresh file, whose every page the kernel would allocate and zero (and free again later):
about half of what a large transfer costs. At most ``_SPARES`` files of up to
``_SPARE_MAX_SIZE`` bytes are kept.

This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections import deque

TYPE_CHECKING = False  # as typing's: workers start without typing (tests/test_architecture.py)
if TYPE_CHECKING:
    from typing import Any, Final


def share(buffer: Any) -> int:
    """A shared-memory file holding a copy of ``buffer``, for this process to send."""
    view = memoryview(buffer).cast("B")
    fd = _take_spare()
    try:
        if fd < 0:
            fd = os.memfd_create("anypool", os.MFD_CLOEXEC)
            # Only this user's processes may open it through /proc.
            os.fchmod(fd, 0o600)
        else:
            # The receiver maps the file whole: cut or grow it to this buffer's size (the
            # writes below then cover every byte of it).
            os.ftruncate(fd, view.nbytes)
        written = 0
        while written < view.nbytes:
            written += os.pwrite(fd, view[written:], written)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


# Spare shared-memory files (descriptors), newest last. Appended to by finalizers, which run
# whenever a mapping is collected, in any thread: only deque's atomic operations touch it.


_spares: deque[int] = deque()
_SPARES: Final = 2
_SPARE_MAX_SIZE: Final = 64 * 1024 * 1024
_keepers = 0
"""How many reasons this process has to keep spare files (open pools; 1 in a worker)."""


def keep_spare_files(keep: bool) -> None:
    """Count one more (or one fewer) reason to keep spare files; with none left, close them."""
    global _keepers
    _keepers += 1 if keep else -1
    if _keepers == 0:
        _drop_spares(0)


def _take_spare() -> int:
    try:
        return _spares.pop()
    except IndexError:
        return -1


def _recycle(fd: int, size: int, owner: int) -> None:
    """A mapping of the file ``fd`` was collected: keep the file as a spare, or close it."""
    if _keepers > 0 and owner == os.getpid() and size <= _SPARE_MAX_SIZE:
        _spares.append(fd)
        _drop_spares(_SPARES)
    else:
        # A mapping inherited through fork() is no sign that its file is free: the process it
        # came from may still map it.
        os.close(fd)


def _drop_spares(keep: int) -> None:
    while len(_spares) > keep:
        try:
            fd = _spares.popleft()
        except IndexError:  # taken meanwhile by another thread
            return
        os.close(fd)


def _forget_spares_after_fork() -> None:
    # Both are the parent's: its spare files, which it may be writing again, and its pools.
    global _keepers
    _keepers = 0
    _drop_spares(0)


os.register_at_fork(after_in_child=_forget_spares_after_fork)


def map_shared(fd: int) -> mmap.mmap:
    """Map a shared-memory file received; its descriptor is closed or kept as a spare once
    the mapping is collected."""
    try:
        size = os.fstat(fd).st_size
        # MAP_POPULATE: one system call maps every page, instead of a fault per page later.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapping = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    weakref.finalize(mapping, _recycle, fd, size, os.getpid()).atexit = False
    return mapping
