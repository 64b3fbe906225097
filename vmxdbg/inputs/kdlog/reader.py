"""Lines of a saved kd session, streamed from a binary file.

The encoding is detected from the first bytes: a UTF-8 / UTF-16 byte-order
mark, else UTF-16 LE/BE by where the NUL bytes fall (WinDbg writes UTF-16
logs without a BOM when `.logopen /u` is used), else UTF-8, else latin-1.
Undecodable bytes become U+FFFD; NUL characters are dropped. CR, LF and CRLF
all end a line. `iter_blocks` hands out whole lines a chunk at a time (the
parser finds prompts in a block with str.find, at C speed); `iter_lines` one
line at a time. A line longer than `max_line` characters is cut there (the
rest is skipped) and reported as truncated. Memory use is bounded by the
chunk size and `max_line`, never by the size of the file.
"""
from __future__ import annotations

import codecs
import io
from typing import BinaryIO, Callable, Iterator, NamedTuple, Optional, Tuple


# bytes read at a time: a parse in a fresh process measured 5-10% faster on the generated
# 64 MB log of bench/bench_kdlog.py with 64 KiB than with 1 MiB (the same on the excerpts)
CHUNK = 64 << 10
READ_LABEL = "MiB of the log read"   # the progress line (vmxdbg.common.progress), one step per MIB
MIB = 1 << 20
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


class Block(NamedTuple):
    """Consecutive lines of the log. Normally `text` is one or more whole lines, each
    ending in "\n", and `number` is the number of the first. A line cut at the bound
    (`truncated`) or a last line with no line end (`ended` False) comes alone, without "\n"."""

    text: str
    number: int
    ended: bool = True
    truncated: bool = False


class _Cutter:
    """Cuts decoded text (LF line ends, any chunking) into Blocks of whole lines; a line
    longer than max_line is cut there and the rest of it dropped up to its end."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.number = 1         # the number of the next line
        self.carry = ""         # the current, unfinished line (at most max_line characters)
        self.skipping = False   # the current line is past max_line: drop the rest up to its end

    def feed(self, text: str) -> Iterator[Block]:
        if text and self.skipping:
            end = text.find("\n")
            if end < 0:
                return
            yield Block(self.carry, self.number, True, True)
            self.number += 1
            self.carry, self.skipping, text = "", False, text[end + 1:]
        if text:
            last = text.rfind("\n")
            if last < 0:
                self.carry += text
            else:
                block = self.carry + text[:last + 1] if self.carry else text[:last + 1]
                self.carry = text[last + 1:]
                yield Block(block, self.number)
                self.number += block.count("\n")
            if len(self.carry) > self.max_line:
                self.carry, self.skipping = self.carry[:self.max_line], True

    def end(self) -> Iterator[Block]:
        """The last line, when the log does not end with a line end (or ends inside a cut line)."""
        if self.carry or self.skipping:
            yield Block(self.carry, self.number, False, self.skipping)


def iter_blocks(stream: BinaryIO, *, max_line: int = MAX_LINE, chunk: int = CHUNK,
                progress: Optional[Callable[[int], None]] = None) -> Iterator[Block]:
    """Yield the log as blocks of whole lines, about `chunk` bytes each; `progress`
    is called with the number of bytes read after each chunk."""
    head = stream.read(PROBE)
    encoding, skip = detect_encoding(head)
    if _seekable(stream):
        # Decoding and CR/CRLF -> LF (also across chunks) done by io.TextIOWrapper, in C
        yield from _blocks_of_text(stream, encoding, skip, max_line, chunk, progress)
        return
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    cut = _Cutter(max_line)
    pending_cr = False      # the previous piece ended in CR: a leading LF belongs to it
    data = head[skip:]
    done = len(head)
    while True:
        final = not data
        text = decoder.decode(data, final=final) if data or final else ""
        if "\x00" in text:
            text = text.replace("\x00", "")
        if text and pending_cr:
            pending_cr = False
            if text[0] == "\n":
                text = text[1:]
        if "\r" in text:
            pending_cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        yield from cut.feed(text)
        if progress is not None:
            progress(done)
        if final:
            break
        data = stream.read(chunk)
        done += len(data)
    yield from cut.end()


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _blocks_of_text(stream: BinaryIO, encoding: str, skip: int, max_line: int, chunk: int,
                    progress: Optional[Callable[[int], None]]) -> Iterator[Block]:
    """iter_blocks for a seekable stream: the same blocks, decoded by a TextIOWrapper."""
    stream.seek(skip)
    text_stream = io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline=None)  # type: ignore[arg-type]
    cut = _Cutter(max_line)
    try:
        while True:
            text = text_stream.read(chunk)
            if not text:
                break
            if "\x00" in text:
                text = text.replace("\x00", "")
            yield from cut.feed(text)
            if progress is not None:
                progress(stream.tell())
    finally:
        try:
            text_stream.detach()   # the caller's file stays theirs to close
        except ValueError:         # already closed: the parse ended in an error and the file went first
            pass
    yield from cut.end()


def iter_lines(stream: BinaryIO, *, max_line: int = MAX_LINE, chunk: int = CHUNK) -> Iterator[Line]:
    """Yield every line of `stream` (numbered from 1) as decoded text without its line end."""
    for b in iter_blocks(stream, max_line=max_line, chunk=chunk):
        if b.truncated or not b.ended:
            yield Line(b.number, b.text, b.ended, b.truncated)
            continue
        for n, piece in enumerate(b.text.split("\n")[:-1], b.number):
            if len(piece) > max_line:
                yield Line(n, piece[:max_line], True, True)
            else:
                yield Line(n, piece)
