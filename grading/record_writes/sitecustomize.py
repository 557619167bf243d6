"""Loaded by the submission's Python when grading checks "§7 one write": records its socket writes.

The grading harness puts this folder first on the submission's PYTHONPATH and
names a log file in GRADING_WRITES_LOG. `socket.socket.send` and `sendall`
are wrapped: each write's bytes are followed through the response framing of
PROTOCOL.md §1 (a 7-byte header `<BHI`, then its payload), and a response
whose header and payload (or any two parts) leave in separate writes is logged
as one line `split CODE SIZES`. Nothing else changes: the wrapped call is the
original one, with the same arguments and result. Standard library only.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Any

RESPONSE_HEADER = struct.Struct("<BHI")  # version(1) code(2) payload_size(4)
_LOG = os.environ.get("GRADING_WRITES_LOG")


class _Framing:
    """Where one connection's outgoing bytes stand in the response stream."""

    def __init__(self) -> None:
        self.header = b""  # the current response's header bytes so far
        self.remaining = 0  # payload bytes of the current response still to come
        self.sizes: list[int] = []  # bytes of the current response carried by each write so far

    def feed(self, data: bytes) -> list[str]:
        """Follow one write; the responses it completed that took more than one write."""
        events = []
        view = memoryview(data)
        touched = False  # whether this write already carried bytes of the current response
        while view:
            if len(self.header) < RESPONSE_HEADER.size:
                taken = min(RESPONSE_HEADER.size - len(self.header), len(view))
                self.header += bytes(view[:taken])
                if len(self.header) == RESPONSE_HEADER.size:
                    self.remaining = RESPONSE_HEADER.unpack(self.header)[2]
            else:
                taken = min(self.remaining, len(view))
                self.remaining -= taken
            view = view[taken:]
            if touched:
                self.sizes[-1] += taken
            else:
                self.sizes.append(taken)
                touched = True
            if len(self.header) == RESPONSE_HEADER.size and not self.remaining:
                if len(self.sizes) > 1:
                    code = RESPONSE_HEADER.unpack(self.header)[1]
                    events.append(f"split {code} {'+'.join(map(str, self.sizes))}")
                self.header, self.sizes, touched = b"", [], False
        return events


_framings: dict[int, _Framing] = {}
_lock = threading.Lock()


def _record(sock: socket.socket, data: Any, count: int) -> None:
    try:
        chunk = bytes(memoryview(data).cast("B")[:count])
        with _lock:
            events = _framings.setdefault(id(sock), _Framing()).feed(chunk)
        if events and _LOG:
            with open(_LOG, "a", encoding="ascii") as log:
                log.write("".join(f"{event}\n" for event in events))
    except Exception:  # noqa: S110  # the recorder must never change what the server does
        pass


_original_send = socket.socket.send
_original_sendall = socket.socket.sendall


def _send(self: socket.socket, data: Any, *args: Any) -> int:
    count = _original_send(self, data, *args)
    _record(self, data, count)
    return count


def _sendall(self: socket.socket, data: Any, *args: Any) -> None:
    _original_sendall(self, data, *args)
    _record(self, data, len(memoryview(data).cast("B")))


def _forget(self: socket.socket) -> None:
    with _lock:
        _framings.pop(id(self), None)


if _LOG:
    socket.socket.send = _send  # type: ignore[method-assign,assignment]
    socket.socket.sendall = _sendall  # type: ignore[method-assign,assignment]
    _original_close = socket.socket.close

    def _close(self: socket.socket) -> None:
        _forget(self)
        _original_close(self)

    socket.socket.close = _close  # type: ignore[method-assign,assignment]
    with open(_LOG, "a", encoding="ascii") as _log:
        _log.write(f"loaded {os.getpid()}\n")
