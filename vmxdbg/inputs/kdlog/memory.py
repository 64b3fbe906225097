"""Memory dumps: physical `!db`/`!dc`/`!dd`/`!dq`/`!dw`, also named `!kext.dd` ... (lines
start with `#` and an address padded with spaces, `#   1f000 0000f002 ...`,
and a failed read says "Physical memory read at ... failed") and virtual
`db`/`dc`/`dd`/`dq`/`dp`/`dw` (addresses with or without the backtick; `/p`
makes them physical). Bytes shown as `??` are unknown and split the block.

Consecutive lines are joined into one block before they reach the snapshot,
so a long dump costs one merge, not one per line.
"""
from __future__ import annotations

import functools
import re
from array import array
from typing import Dict, List, Optional, Pattern, Tuple

from .output import CommandOutput
from .reader import MAX_LINE, Line
from .state import LogState

# element width in bytes -> (element pattern, separator pattern)
_ELEMENTS = {
    1: (r"[0-9a-f?]{2}", r"[ -]"),
    2: (r"[0-9a-f?]{4}", r" "),
    4: (r"[0-9a-f?]{8}", r" "),
    8: (r"[0-9a-f?]{8}`?[0-9a-f?]{8}", r" "),
}
_ADDR = r"([0-9a-f]{1,8}(?:`[0-9a-f]{8})?|[0-9a-f]{9,16})"
_FAILED = re.compile(r"physical memory read at ([0-9a-f`]+) failed", re.I)
_STARTS_WITH_ADDR = re.compile(r"^\s*#?\s*[0-9a-f]{4,8}(?:`[0-9a-f]{8})?\s", re.I)
# the same, matched at a line start inside a block of lines (it cannot match a line end)
_STARTS_WITH_ADDR_IN_BLOCK = re.compile(_STARTS_WITH_ADDR.pattern.replace(r"\s", r"[^\S\n]"),
                                        re.IGNORECASE | re.MULTILINE)

_WIDTH_OF = {"b": 1, "c": 4, "d": 4, "q": 8, "w": 2, "p": 8}
# `!dd`, and the same extension named with its DLL: `!kext.dd`
_DUMP_COMMAND = re.compile(r"^(!(?:kext\.)?)?d([bcdqwp])(?:\s|$)", re.I)
_PHYSICAL_OPTION = re.compile(r"(?:^|\s)/p(?:c|uc|wc)?(?:\s|$)", re.I)
_SEPARATORS = re.compile(r"[ -]+")
_SWAP = {2: "H", 4: "I", 8: "Q"}   # array codes: byteswap turns the shown (big-endian) digits into memory order


def _row(m: "re.Match[str]", code: Optional[str]) -> Tuple[int, bytes]:
    """(address, bytes in memory order) of a matched dump row; `code` is the array type code that
    byteswaps its elements (None for bytes)."""
    address = int(m.group(1).replace("`", ""), 16)
    data = bytes.fromhex(m.group(2).replace("`", "").replace("-", " "))
    if code is not None:
        swapped = array(code, data)
        swapped.byteswap()
        data = swapped.tobytes()
    return address, data


def _line_pattern(width: int, physical_prefix: bool, blank: str = r"\s", flags: int = 0) -> Pattern[str]:
    elem, sep = _ELEMENTS[width]
    prefix = rf"#{blank}*" if physical_prefix else r"(?:[0-9a-f]{4}:)?"
    # the element run, then (for db/dc) the characters column: two spaces before it in
    # a virtual dump, one in a physical one (`#   e9000 000ea002 ... ................`)
    return re.compile(rf"^{blank}*{prefix}{_ADDR}{blank}+((?:{elem}{sep})*{elem})-?(?:{blank}+\S.*)?{blank}*$",
                      re.I | flags)


_PATTERNS: Dict[tuple, Pattern[str]] = {(w, p): _line_pattern(w, p) for w in _ELEMENTS for p in (True, False)}
# The same patterns matched at a line start inside a block of lines: no part of them can
# match a line end ("\s" is "[^\S\n]", "$" is a line end), so each matches as it does on
# the line alone. They spell out both cases of a-f instead of re.IGNORECASE (twice as
# fast; no other character folds to one of them).
_IN_BLOCK: dict[tuple, Pattern[str]] = {
    (w, p): re.compile(_line_pattern(w, p, r"[^\S\n]").pattern.replace("0-9a-f", "0-9a-fA-F"), re.MULTILINE)
    for w in _ELEMENTS for p in (True, False)}


@functools.lru_cache(maxsize=4096)   # once per distinct command: every dump's reader asks
def dump_kind(command: str) -> Optional[tuple]:
    """(element width, physical) for a dump command, or None for other commands."""
    m = _DUMP_COMMAND.match(command.strip())
    if not m:
        return None
    physical = bool(m.group(1)) or bool(_PHYSICAL_OPTION.search(command))
    return _WIDTH_OF[m.group(2).lower()], physical


class DumpOutput(CommandOutput):
    """Collects the bytes of one dump command into contiguous blocks."""

    def __init__(self, state: LogState, cpu: int, command: str, line: int, live: bool = True,
                 kind: str = "") -> None:
        super().__init__(state, cpu, command, line, live, kind)
        kind = dump_kind(command)
        assert kind is not None
        self.width, self.physical = kind
        self.block_start = 0
        self.block = bytearray()
        # virtual addresses of another address space are not this processor's memory
        self.foreign = None if self.physical else state.foreign_space
        if self.foreign is not None:
            state.note(line, f"virtual memory dumped after `{self.foreign}` belongs to that address "
                             "space, not the processor's own; not kept")

    def _flush(self) -> None:
        if self.block and self.foreign is None:
            self.state.add_memory(self.block_start, bytes(self.block), physical=self.physical, cpu=self.cpu)
            self.block = bytearray()

    def _add(self, address: int, data: bytes) -> bool:
        """Append to the block; True when this starts a new block."""
        if self.foreign is not None:
            return False
        if self.block and address == self.block_start + len(self.block):
            self.block += data
            return False
        self._flush()
        self.block_start = address
        self.block += data
        return True

    def feed_segment(self, text: str, start: int, end: int, first: int) -> None:
        """Rows matched in place, without cutting the output into lines: when every line
        is a plain row (the usual dump), all of them at once (`_add_rows`); else line by
        line: a plain row is added, a line the line-by-line path may act on (a row with
        `??`, a failed read, a line that starts like a row, anything under `dp`) goes to
        `feed_lines`, and any other line (prose) is left, as that path leaves it."""
        if self.state.frozen_line is not None:
            self.feed_lines(text[start:end].split("\n")[:-1], first)
            return
        width, physical = self.width, self.physical
        odd = text.find("?", start, end) >= 0 or text.find("failed", start, end) >= 0
        if not odd and end - start <= MAX_LINE:
            rows = _IN_BLOCK[(width, physical)].findall(text, start, end)
            if len(rows) == text.count("\n", start, end):
                self._add_rows(rows, first)
                return
        code = _SWAP.get(width)
        match, find = _IN_BLOCK[(width, physical)].match, text.find
        looks = _STARTS_WITH_ADDR_IN_BLOCK.match
        # a physical dump line without `#` is read with the virtual form of the row
        other = _IN_BLOCK[(width, False)].match if physical else looks
        every = self.command.lstrip().lower().startswith("dp")   # feed tries dwords for dp
        pos, n = start, first
        while pos < end:
            line_end = find("\n", pos, end)
            m = match(text, pos, line_end)
            plain = (m is not None and line_end - pos <= MAX_LINE
                     and not (odd and (find("?", pos, line_end) >= 0 or find("failed", pos, line_end) >= 0)))
            if plain:
                assert m is not None
                self._add_row(*_row(m, code), n)
            elif (m is not None or every or odd or line_end - pos > MAX_LINE
                  or looks(text, pos, line_end) is not None or other(text, pos, line_end) is not None):
                self.feed_lines([text[pos:line_end]], n)
                if self.width != width:   # `dp` on a 32-bit target: dwords from here on
                    width = self.width
                    code = _SWAP.get(width)
                    match = _IN_BLOCK[(width, physical)].match
                    other = _IN_BLOCK[(width, False)].match if physical else looks
            pos, n = line_end + 1, n + 1

    def feed_lines(self, lines: List[str], first: int) -> None:
        """The common case at C speed: a whole row of known values is one bytes.fromhex
        and one byteswap. Anything else (a failed read, `??`, a row that does not parse,
        a long or cut-off line) goes through `feed`, line by line. The width is read for
        each line: under `dp`, `feed` may have found the target prints dwords."""
        physical = self.physical
        frozen = self.state.frozen_line
        for n, text in enumerate(lines, first):
            width = self.width
            code = _SWAP.get(width)
            pattern = _PATTERNS[(width, physical and text.lstrip()[:1] == "#")]
            m = pattern.match(text)
            if m is None or "?" in text or "failed" in text or n == frozen or len(text) > MAX_LINE:
                super().feed_lines([text], n)
                continue
            self._add_row(*_row(m, code), n)

    def _add_rows(self, rows: list[tuple[str, str]], first: int) -> None:
        """(address, elements) of consecutive rows, the first on line `first`: what
        `_add_row` does row by row, with one bytes.fromhex and one byteswap for all of
        them and one `_add` per run of contiguous rows."""
        width = self.width
        data = bytes.fromhex(" ".join([e for _, e in rows]).replace("`", "").replace("-", " "))
        code = _SWAP.get(width)
        if code is not None:
            swapped = array(code, data)
            swapped.byteswap()
            data = swapped.tobytes()
        addresses = [int(a.replace("`", ""), 16) for a, _ in rows]
        if width == 1:
            sizes = [e.count(" ") + e.count("-") + 1 for _, e in rows]
        else:
            sizes = [(e.count(" ") + 1) * width for _, e in rows]
        physical, state = self.physical, self.state
        i, offset, count = 0, 0, len(rows)
        while i < count:
            address = addresses[i]
            j, following = i, address + sizes[i]
            while j + 1 < count and addresses[j + 1] == following:
                j += 1
                following += sizes[j]
            new = self._add(address, data[offset:offset + following - address])
            if not physical:
                if new and self.foreign is None:
                    state.virtual_seen(self.cpu, address, first + i)
            else:
                # as _add_row: the first row of a new block, then every page start, on the
                # line of the row that holds it
                k, scan = i, address
                if new:
                    state.memory_seen(address, sizes[i], first + i)
                    k, scan = i + 1, address + sizes[i]
                page = (scan + 0xFFF) & ~0xFFF
                while page < following:
                    while addresses[k] + sizes[k] <= page:
                        k += 1
                    state.memory_seen(page, addresses[k] + sizes[k] - page, first + k)
                    page += 0x1000
            offset += following - address
            i = j + 1

    def _add_row(self, address: int, data: bytes, line: int) -> None:
        new = self._add(address, data)
        if not self.physical:
            if new and self.foreign is None:
                self.state.virtual_seen(self.cpu, address, line)
            return
        if new:
            self.state.memory_seen(address, len(data), line)
        else:
            page = (address + 0xFFF) & ~0xFFF
            if page < address + len(data):
                self.state.memory_seen(page, address + len(data) - page, line)

    def feed(self, line: Line) -> None:
        text = line.text
        failed = _FAILED.search(text) if "failed" in text else None
        if failed:
            self._flush()
            self.state.note(line.number, f"physical memory read at {failed.group(1)} failed")
            return
        m = _PATTERNS[(self.width, self.physical and text.lstrip().startswith("#"))].match(text)
        if m is None and self.command.lstrip().lower().startswith("dp"):
            m = _PATTERNS[(4, False)].match(text)  # dp on a 32-bit target prints dwords
            if m is not None:
                self.width = 4
        if m is None:
            if _STARTS_WITH_ADDR.match(text) and not text.lstrip().lower().startswith("readvirtual"):
                self.state.warn(line.number, f"memory dump line does not parse: {text.strip()[:80]!r}")
            return
        if not self.state.accept(line.number):
            return
        address = int(m.group(1).replace("`", ""), 16)
        offset = 0
        for tok in _SEPARATORS.split(m.group(2).strip()):
            if "?" in tok:
                self._flush()
            else:
                value = int(tok.replace("`", ""), 16)
                new = self._add(address + offset, value.to_bytes(self.width, "little"))
                if new and not self.physical and self.foreign is None:
                    self.state.virtual_seen(self.cpu, address + offset, line.number)
                if new and self.physical:
                    self.state.memory_seen(address + offset, self.width, line.number)
                elif self.physical and (address + offset) & 0xFFF == 0:
                    self.state.memory_seen(address + offset, self.width, line.number)
            offset += self.width

    def end(self) -> None:
        self._flush()
