"""Paging in the rows a growing table will write next, on a background thread.

A large table appends rows to stores reserved far ahead (``np.zeros``: the OS maps their pages on first
write). The first write to a page faults, and where memory is backed lazily below the OS too (a VM whose
host hands out memory on first touch) that fault costs microseconds per 4 KiB page: on the benchmark
machine 21 ms per 10 MB, more than the rest of creating the rows. ``madvise(MADV_POPULATE_WRITE)`` (Linux
5.14+) faults a range of pages in one call without changing their contents, so it is safe beside the
training thread's writes to the same pages; :func:`page_in_ahead` runs it on a background thread for the
rows a table will append next, :func:`populated_ahead` for the larger arrays a growing table or hash map
is about to move into.
Where the call is missing (another OS, an older kernel) nothing is done.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import mmap
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Ahead", "page_in_ahead", "populate", "populated_ahead"]

_MADV_POPULATE_WRITE = 23  # linux/mman.h, since 5.14
_PAGE = mmap.PAGESIZE


@functools.lru_cache(maxsize=None)
def _madvise():
    """libc's ``madvise``, or None where there is none to populate pages with."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).madvise  # a CDLL call releases the GIL while it runs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_supported = True


def _can_populate() -> bool:
    """Whether madvise can populate pages here: libc has it and no call was refused (a kernel before 5.14)."""
    return _supported and _madvise() is not None


def populate(array: np.ndarray, start: int, stop: int) -> bool:
    """Faults in the pages of rows ``[start, stop)`` of a C-contiguous ``array`` (rows along its first axis),
    writable, their contents (and those of anything sharing their first and last page) unchanged. False
    where the system cannot (nothing was done)."""
    global _supported
    if not _can_populate():
        return False
    row_bytes = array.strides[0]
    low = array.ctypes.data + start * row_bytes
    high = array.ctypes.data + min(stop, array.shape[0]) * row_bytes
    low, high = low // _PAGE * _PAGE, -(-high // _PAGE) * _PAGE
    if high <= low:
        return True
    if _madvise()(low, high - low, _MADV_POPULATE_WRITE) != 0:
        error = ctypes.get_errno()
        if error in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # a kernel before 5.14, or not allowed
            _supported = False
            logger.info("page_in: madvise(MADV_POPULATE_WRITE) unavailable (%s); rows page in as written",
                        os.strerror(error))
        return False
    return True


@functools.lru_cache(maxsize=None)
def _worker() -> ThreadPoolExecutor:
    """The process's page-in thread (one: faulting pages in is the kernel's work, not parallel)."""
    return ThreadPoolExecutor(1, thread_name_prefix="monolith-page-in")


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads: it makes its own
    os.register_at_fork(after_in_child=_worker.cache_clear)


def page_in_ahead(stores: Sequence[np.ndarray], start: int, stop: int) -> None:
    """Has rows ``[start, stop)`` of every store paged in on the background thread (see :func:`populate`);
    the task holds the stores, so a store replaced meanwhile stays valid until it is done."""
    if not _can_populate() or stop <= start:
        return
    _worker().submit(_populate_all, list(stores), start, stop)


class Ahead:
    """An array being prepared on the background thread (:func:`populated_ahead`)."""

    def __init__(self, future: Future) -> None:
        self._future = future
        self._pid = os.getpid()

    def get(self) -> np.ndarray | None:
        """The array, once ready; None in a process forked meanwhile (its copy of the thread never runs)."""
        return self._future.result() if os.getpid() == self._pid else None


def populated_ahead(shape: int | tuple[int, ...], dtype: type, rows: int | None = None) -> Ahead | None:
    """``np.zeros(shape, dtype)`` with its first ``rows`` rows (None: all) faulted in, on the background
    thread (None where the system cannot): e.g. a hash map's next slot array, or the larger store a table
    is about to grow into."""
    if not _can_populate():
        return None
    return Ahead(_worker().submit(_populated, shape, dtype, rows))


def _populated(shape: int | tuple[int, ...], dtype: type, rows: int | None) -> np.ndarray:
    array = np.zeros(shape, dtype=dtype)
    populate(array, 0, array.shape[0] if rows is None else rows)
    return array


def _populate_all(stores: list[np.ndarray], start: int, stop: int) -> None:
    for store in stores:
        if not populate(store, start, stop):
            return
