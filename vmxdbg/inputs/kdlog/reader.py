"""Lines of a saved kd session, streamed from a binary file.

The encoding is detected from the first bytes: a UTF-8 / UTF-16 byte-order
mark, else UTF-16 LE/BE by where the NUL bytes fall (WinDbg writes UTF-16
logs without a BOM when `.logopen /u` is used), else UTF-8, else latin-1.
Undecodable bytes become U+FFFD; NUL characters are dropped. CR, LF and CRLF
all end a line. A line longer than `max_line` characters is cut there (the
rest is skipped) and reported as truncated. Memory use is bounded by the
chunk size and `max_line`, never by the size of the file.
"""
from __future__ import annotations

import codecs
from typing import BinaryIO, Iterator, List, NamedTuple, Tuple

from ...common import progress

CHUNK = 1 << 20
READ_LABEL = "MiB of the log read"   # the progress line (vmxdbg.common.progress), one step per CHUNK
MAX_LINE = 64 * 1024
PROBE = 64 * 1024


class Line(NamedTuple):
    """One line of the log. `ended` is False for a last line with no line end
    (the file may have been cut there); `truncated` when longer than the bound."""

    number: int
    text: str
    ended: bool = True
    truncated: bool = False


def detect_encoding(head: bytes) -> Tuple[str, int]:
    """(codec name, number of BOM bytes to skip) for a file starting with `head`."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", 2
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", 2
    sample = head[:4096]
    pairs = len(sample) // 2
    if pairs >= 2:
        even_nul = sum(1 for i in range(0, pairs * 2, 2) if sample[i] == 0)
        odd_nul = sum(1 for i in range(1, pairs * 2, 2) if sample[i] == 0)
        # ASCII-heavy UTF-16: one byte of nearly every pair is NUL, the other rarely.
        if odd_nul >= 0.6 * pairs and even_nul <= 0.1 * pairs:
            return "utf-16-le", 0
        if even_nul >= 0.6 * pairs and odd_nul <= 0.1 * pairs:
            return "utf-16-be", 0
    try:
        codecs.getincrementaldecoder("utf-8")("strict").decode(head, final=False)
        return "utf-8", 0
    except UnicodeDecodeError:
        return "latin-1", 0


def iter_lines(stream: BinaryIO, *, max_line: int = MAX_LINE, chunk: int = CHUNK) -> Iterator[Line]:
    """Yield every line of `stream` (numbered from 1) as decoded text without its line end."""
    head = stream.read(PROBE)
    encoding, skip = detect_encoding(head)
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    number = 0
    parts: List[str] = []   # the current, unfinished line
    held = 0                # characters in `parts`
    truncated = False
    pending_cr = False      # the previous piece ended in CR: a leading LF belongs to it
    data = head[skip:]
    while True:
        final = not data
        text = decoder.decode(data, final=final) if data or final else ""
        if "\x00" in text:
            text = text.replace("\x00", "")
        if text and pending_cr:
            pending_cr = False
            if text.startswith("\n"):
                text = text[1:]
        if text:
            if "\r" in text:
                if text.endswith("\r"):
                    pending_cr = True
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            pieces = text.split("\n")
            for piece in pieces[:-1]:
                number += 1
                if parts:
                    parts.append(piece)
                    piece = "".join(parts)
                    parts, held = [], 0
                if len(piece) > max_line:
                    piece, truncated = piece[:max_line], True
                yield Line(number, piece, True, truncated)
                truncated = False
            rest = pieces[-1]
            if rest:
                room = max_line - held
                if room > 0:
                    parts.append(rest[:room])
                    held += min(len(rest), room)
                if len(rest) > room:
                    truncated = True
        if final:
            break
        data = stream.read(chunk)
        progress.advance(READ_LABEL)
    if parts or truncated:
        yield Line(number + 1, "".join(parts), False, truncated)
