"""Dumped memory while a log is parsed: 4 KiB pages with a known-bytes mask.

Adding bytes costs the same however many dumps came before (a later dump of
the same bytes replaces them), and the store is capped at MAX_PAGES pages, so
no log can make it grow without bound. `runs()` gives the known bytes as
maximal contiguous runs, lowest address first, to fill a snapshot Memory.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

PAGE = 0x1000
MAX_PAGES = 8192  # 32 MiB of dumped memory per store


class PageStore:
    def __init__(self, max_pages: Optional[int] = None) -> None:
        self._pages: Dict[int, Tuple[bytearray, List[int]]] = {}  # page -> (data, [known bitmask])
        self.max_pages = MAX_PAGES if max_pages is None else max_pages
        self.refused = 0  # bytes not kept because the store was full

    def add(self, address: int, data: bytes) -> None:
        """Record `data` at `address` (bytes past the cap are counted in `refused`)."""
        pos = 0
        while pos < len(data):
            page, offset = divmod(address + pos, PAGE)
            n = min(PAGE - offset, len(data) - pos)
            slot = self._pages.get(page)
            if slot is None:
                if len(self._pages) >= self.max_pages:
                    self.refused += n
                    pos += n
                    continue
                slot = self._pages[page] = (bytearray(PAGE), [0])
            slot[0][offset:offset + n] = data[pos:pos + n]
            slot[1][0] |= ((1 << n) - 1) << offset
            pos += n

    def runs(self) -> Iterator[Tuple[int, bytes]]:
        """(address, bytes) for every maximal run of known bytes, in address order."""
        start, buf = -1, bytearray()
        for page in sorted(self._pages):
            data, (mask,) = self._pages[page]
            base = page * PAGE
            offset = 0
            while offset < PAGE:
                if not mask >> offset & 1:
                    # skip the unknown bytes
                    if start >= 0:
                        yield start, bytes(buf)
                        start, buf = -1, bytearray()
                    rest = mask >> offset
                    if not rest:
                        break
                    offset += (rest & -rest).bit_length() - 1
                    continue
                rest = ~(mask >> offset)
                length = min((rest & -rest).bit_length() - 1, PAGE - offset)
                if start < 0 or start + len(buf) != base + offset:
                    if start >= 0:
                        yield start, bytes(buf)
                    start, buf = base + offset, bytearray()
                buf += data[offset:offset + length]
                offset += length
        if start >= 0:
            yield start, bytes(buf)

    def __len__(self) -> int:
        return len(self._pages)
