"""The page cache of a file being received: handed back to the kernel as it is written.

A received file is written once and not read again by the server. Left to the
kernel, a 1 GiB upload takes 1 GiB of fresh page cache, and on this project's
VM every fresh page costs the host a page fault: the server's CPU per GiB and
its speed both suffer (bench/README.md). So the written pages are advised away
with `posix_fadvise(POSIX_FADV_DONTNEED)` a window at a time, and the next
writes reuse them.

That advice starts the writeback of the dirty pages it covers in the calling
thread, which waits while the disk's queue is full: made by the receiving
thread, it held a transfer to the disk's speed on a disk slower than the
network (bench/README.md, "Round of 2026-12-06"). A transfer that holds a large
pair of buffers (handlers.ReceiveBuffers: four at most) therefore advises from
a thread of its own (WritebackBehind), up to WRITEBACK_LAG bytes behind its
writes; the others advise inline (PageCacheRelease).

Advice only: where the platform has no posix_fadvise (Windows, macOS) nothing
is advised, and a refusal (a filesystem that does not take it) is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

log = logging.getLogger(__name__)

# The pages of a file are advised a window at a time: every PAGE_CACHE_WINDOW bytes written.
PAGE_CACHE_WINDOW = 8 * 1024 * 1024
# How far the advice of a WritebackBehind may fall behind its writes: bytes written and not
# yet handed to the disk. A transfer that gets that far ahead waits; the dirty page cache of
# a transfer stays near this bound whatever the file's size (four such transfers at most).
# Measured in bench/README.md: on a disk slower than the network, 256 MiB gave +26-43%
# MB/s; 512 MiB no more, at more CPU; 64 MiB less.
WRITEBACK_LAG = 256 * 1024 * 1024
_fadvise = getattr(os, "posix_fadvise", None)
THREAD_NAME = "writeback"  # the advising threads of WritebackBehind


class PageCacheRelease:
    """Advises the file's written pages away, in the thread that writes them.

    Every PAGE_CACHE_WINDOW bytes written, the last two windows are advised:
    the older one has been written back since the last advice and its pages
    are freed; the newer one starts its writeback. So the file's page cache
    stays a few windows large whatever its size.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.start = 0  # the advice covers the file from here ...
        self.advised = 0  # ... to the end of the window advised last

    def written(self, total: int, last: bool) -> None:
        """`total` bytes of the file are written; `last`: all of them."""
        if total - self.advised < PAGE_CACHE_WINDOW and not last:
            return
        self.advise(total)

    def advise(self, total: int) -> None:
        """Advise from the start of the window before the last one up to `total`."""
        if _fadvise is not None:
            with contextlib.suppress(OSError):
                _fadvise(self.fd, self.start, total - self.start, os.POSIX_FADV_DONTNEED)
        self.start, self.advised = self.advised, total

    def close(self) -> None:
        """The transfer is over, whole or not: nothing more is advised."""


class WritebackBehind(PageCacheRelease):
    """The same advice, made by a thread of its own up to `lag` bytes behind the writes.

    The writing thread waits for the disk only when the advice is more than
    `lag` bytes behind: a file up to about that size is received at the page
    cache's speed, and its last windows go to the disk after the transfer has
    been answered. The thread advises through a descriptor of its own (a dup),
    so it may go on after the transfer's file is closed, moved or removed; it
    ends once it has advised everything written before close().
    """

    def __init__(self, fd: int, lag: int = WRITEBACK_LAG) -> None:
        super().__init__(os.dup(fd))
        self.lag = lag
        self.changed = threading.Condition()  # guards the five fields below
        # Set by the writing thread: the bytes written (before any read), and whether that is all.
        self.total = 0  # pragma: no mutate  (set before it is read)
        self.closed = False  # pragma: no mutate  (read as a truth value only)
        # Set by the advising thread: the bytes advised, as the writing thread sees them, and
        # whether it has ended.
        self.done = 0
        self.ended = False  # pragma: no mutate  (read as a truth value only)
        self.waits = 0  # how often the writing thread has waited for the advice (tests)
        self.thread = threading.Thread(target=self._advise_behind, name=THREAD_NAME, daemon=True)
        try:
            self.thread.start()
        except BaseException:  # no thread to be had: the caller advises inline
            os.close(self.fd)
            raise

    def written(self, total: int, last: bool) -> None:
        with self.changed:
            self.total = total
            self.closed = self.closed or last
            behind = total - self.done  # pragma: no mutate  (a + only wakes the advising thread more often)
            if behind >= PAGE_CACHE_WINDOW or last:
                self.changed.notify_all()
            if not self._ahead_within_lag():
                self.waits += 1
                self.changed.notify_all()  # tests wait for the waits
                self.changed.wait_for(self._ahead_within_lag)

    def _ahead_within_lag(self) -> bool:
        return self.ended or self.total - self.done <= self.lag

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def _advise_behind(self) -> None:
        try:
            self._advise_until_closed()
        except Exception:  # a bug, not a refusal: the transfer goes on without advice
            log.exception("page cache advice stopped for a transfer")
        finally:
            with self.changed:  # whatever ended the thread, the writing thread waits no more
                self.ended = True
                self.changed.notify_all()
            os.close(self.fd)

    def _has_work(self) -> bool:
        """A window written and not yet advised, or the end (the advising thread waits for it)."""
        # Not mutated: a + for the - makes the idle thread spin instead of wait, which changes no
        # result, only CPU time (docs/testing.md).
        return self.total - self.advised >= PAGE_CACHE_WINDOW or self.closed  # pragma: no mutate

    def _advise_until_closed(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(self._has_work)
                total, closed = self.total, self.closed
            if total > self.advised:
                self.advise(total)
            with self.changed:
                self.done = self.advised
                self.changed.notify_all()
                if closed and self.advised == self.total:
                    return


def page_cache_release(fd: int, behind: bool) -> PageCacheRelease:
    """What advises the pages of the file open as `fd`: a WritebackBehind if `behind` and
    the platform advises at all, else (or when no thread or descriptor can be had) inline."""
    if behind and _fadvise is not None:
        with contextlib.suppress(OSError, RuntimeError):
            return WritebackBehind(fd)
    return PageCacheRelease(fd)
