"""`dg` output: one row per selector, e.g.

    0010 00000000`00000000 00000000`00000000 Code RE Ac 0 Nb By P  Lo 0000029b

The last column holds the descriptor's attribute bits as WinDbg packs them:
bits 7:0 = type, S, DPL, P (descriptor byte 5) and bits 11:8 = AVL, L, D/B, G.
In the VMCS access-rights format those flags sit at bits 15:12 (Vol.3C 25.4.1,
SDM 325462-080US, 2023), so attributes = (flags & 0xff) | (flags >> 8 & 0xf) << 12.
"""
from __future__ import annotations

import re

from .output import CommandOutput
from .reader import MAX_LINE, Line
from .state import Descriptor

_NUM = r"([0-9a-f]{8}(?:`[0-9a-f]{8})?)"
_ROW_TEXT = (rf"^\s*([0-9a-f]{{4}})\s+{_NUM}\s+{_NUM}\s+(.+?)\s+([0-3])\s+(?:Nb|Bg)\s+(?:By|Pg)\s+(?:P|Np)\s+"
             rf"(?:Lo|Nl)\s+([0-9a-f]{{8}})\s*$")
_LOOKS_TEXT = r"^\s*[0-9a-f]{4}\s+[0-9a-f]{8}"
_ROW = re.compile(_ROW_TEXT, re.IGNORECASE)
_LOOKS = re.compile(_LOOKS_TEXT, re.IGNORECASE)
# the same, matched at a line start inside a block of lines: no part of them can match a
# line end, so each matches as it does on the line alone
_ROW_IN_BLOCK = re.compile(_ROW_TEXT.replace(r"\s", r"[^\S\n]"), re.IGNORECASE | re.MULTILINE)
_LOOKS_IN_BLOCK = re.compile(_LOOKS_TEXT.replace(r"\s", r"[^\S\n]"), re.IGNORECASE | re.MULTILINE)


def vmcs_attributes(flags: int) -> int:
    """WinDbg's `dg` Flags column -> VMCS access-rights format (bit 16 clear)."""
    return (flags & 0xFF) | ((flags >> 8) & 0xF) << 12


class DgOutput(CommandOutput):
    def feed_segment(self, text: str, start: int, end: int, first: int) -> None:
        """Rows matched in place, line by line; a line that only looks like a row (or any
        line, when the output may hold one longer than MAX_LINE) goes to `feed_lines`,
        and the others (the header) are not looked at further."""
        if end - start > MAX_LINE:
            super().feed_segment(text, start, end, first)
            return
        row, looks = _ROW_IN_BLOCK.match, _LOOKS_IN_BLOCK.match
        pos, n = start, first
        while pos < end:
            line_end = text.find("\n", pos, end)
            m = row(text, pos, line_end)
            if m is not None:
                self._row(m, n)
            elif looks(text, pos, line_end):
                self.feed_lines([text[pos:line_end]], n)
            pos, n = line_end + 1, n + 1

    def feed(self, line: Line) -> None:
        m = _ROW.match(line.text)
        if m is None:
            if _LOOKS.match(line.text):
                self.state.warn(line.number, f"dg row does not parse: {line.text.strip()[:80]!r}")
            return
        self._row(m, line.number)

    def _row(self, m: re.Match[str], line: int) -> None:
        desc = Descriptor(
            selector=int(m.group(1), 16),
            attributes=vmcs_attributes(int(m.group(6), 16)),
            base=int(m.group(2).replace("`", ""), 16),
            limit=int(m.group(3).replace("`", ""), 16),
            line=line)
        self.state.add_descriptor(self.cpu, desc)
