"""Length-prefixed JSON messages over a pipe: the private channel between the supervisor
(workers/sandbox.py) and the evaluation process. No torch here."""
from __future__ import annotations

import json
import os
import select
import struct
import time

_HEADER = struct.Struct(">I")


class ChannelClosed(EOFError):
    """The other end closed the pipe (the evaluation process died or exited)."""


def send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks, remaining = [], n
    while remaining:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, remaining)
        if not chunk:
            raise ChannelClosed("pipe closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, timeout: float | None = None) -> dict | None:
    """The next message, or None when `timeout` seconds pass first (None: wait forever).
    A message that starts arriving is always read to its end within the same deadline."""
    deadline = None if timeout is None else time.monotonic() + timeout
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    body = _read_exact(fd, length, deadline)
    if body is None:
        return None
    return json.loads(body)
