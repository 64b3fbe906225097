"""Progress of a long parse on stderr: one line rewritten in place with `\\r`.

Only when stderr is a terminal and the log is over PROGRESS_BYTES; never in a
pipe, a file or CI. It is redrawn at most every INTERVAL seconds, and cleared
when the parse ends.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

PROGRESS_BYTES = 4 * 1024 * 1024
INTERVAL = 0.2


class Progress:
    """Call with the bytes read so far; `close()` clears the line."""

    def __init__(self, name: str, total: int, stream: TextIO) -> None:
        self.name, self.total, self.stream = name, max(total, 1), stream
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < INTERVAL:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6) / 1e6
        self.stream.write(f"\rvmxdbg: reading {self.name}: {min(done, self.total) * 100 // self.total:3d}% "
                          f"({done / 1e6:,.0f} of {self.total / 1e6:,.0f} MB, {rate:,.0f} MB/s)")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def progress_for(path: "os.PathLike[str]", stream: Optional[TextIO] = None) -> Optional[Progress]:
    """A Progress for reading `path`, or None (stderr not a terminal, or a small file)."""
    stream = sys.stderr if stream is None else stream
    try:
        if not stream.isatty():
            return None
        size = os.path.getsize(path)
    except (OSError, ValueError, AttributeError):
        return None
    if size <= PROGRESS_BYTES:
        return None
    return Progress(os.path.basename(path), size, stream)


__all__ = ["Progress", "progress_for", "PROGRESS_BYTES"]
