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
from .reader import Line
from .state import Descriptor

_NUM = r"([0-9a-f]{8}(?:`[0-9a-f]{8})?)"
_ROW = re.compile(
    rf"^\s*([0-9a-f]{{4}})\s+{_NUM}\s+{_NUM}\s+(.+?)\s+([0-3])\s+(?:Nb|Bg)\s+(?:By|Pg)\s+(?:P|Np)\s+(?:Lo|Nl)\s+([0-9a-f]{{8}})\s*$",
    re.I)
_LOOKS = re.compile(r"^\s*[0-9a-f]{4}\s+[0-9a-f]{8}", re.I)


def vmcs_attributes(flags: int) -> int:
    """WinDbg's `dg` Flags column -> VMCS access-rights format (bit 16 clear)."""
    return (flags & 0xFF) | ((flags >> 8) & 0xF) << 12


class DgOutput(CommandOutput):
    def feed(self, line: Line) -> None:
        m = _ROW.match(line.text)
        if m is None:
            if _LOOKS.match(line.text):
                self.state.warn(line.number, f"dg row does not parse: {line.text.strip()[:80]!r}")
            return
        desc = Descriptor(
            selector=int(m.group(1), 16),
            attributes=vmcs_attributes(int(m.group(6), 16)),
            base=int(m.group(2).replace("`", ""), 16),
            limit=int(m.group(3).replace("`", ""), 16),
            line=line.number)
        self.state.add_descriptor(self.cpu, desc)
