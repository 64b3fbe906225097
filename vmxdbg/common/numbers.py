"""Integers as people type them and as WinDbg prints them.

Two kinds of number, one parser each, used by every option, console command
and file reader:

- a value (`parse_int`): an address, a register, an MSR or a field. Accepted:
  `0x1F`, `1f` (bare hex, as `rdmsr` and `r` print it), `00da0400`00000004`
  (backtick between the 32-bit halves), `0n123` (decimal), `0y101` (binary),
  and JSON ints. Bare digits are hex, WinDbg's default radix.
- a count (`parse_count`): a processor number, a line number, a stop number.
  Bare digits are decimal, as in WinDbg's `~1s` and an editor's line numbers;
  `0x10` is hex and `0n16` decimal, as for values.
"""
from __future__ import annotations

import re
from typing import Optional, Union

from .errors import InputError

_HEX = re.compile(r"(?:0x)?([0-9a-f]+)")
_DEC = re.compile(r"[0-9]+")   # ASCII only: str.isdigit() also takes "²" and "١", which int() refuses
_MAX_DIGITS = 64
_LONG = re.compile(r"(?:0x|0n|0y)?[0-9a-f]+")   # a long string of digits: a number, too wide

def parse_int(text: Union[str, int], *, what: str = "value", bits: Optional[int] = None) -> int:
    """Parse one integer in any accepted form; raise InputError naming `what`.
    `bits`: the width the value must fit in (a register, MSR or field); wider is "too wide"."""
    if isinstance(text, bool):
        raise InputError(f"{what}: expected an integer, got a boolean")
    if isinstance(text, int):
        if text < 0:
            raise InputError(f"{what}: negative value {text}")
        return fits(text, bits, what)
    if not isinstance(text, str):
        raise InputError(f"{what}: expected an integer, got {type(text).__name__}")
    s = text.strip().lower().replace("`", "").replace("_", "")
    if not s:
        raise InputError(f"{what}: {_shown(text)} is not a number")
    if len(s) > _MAX_DIGITS + 2:
        if _LONG.fullmatch(s):
            raise InputError(f"{what}: {_shown(text)} is too wide ({len(s)} digits; "
                             f"{'at most ' + str(bits) + ' bits' if bits else 'more than any register holds'})")
        raise InputError(f"{what}: {_shown(text)} is not a number")
    if s.startswith("0n"):
        if _DEC.fullmatch(s[2:]):
            return fits(int(s[2:], 10), bits, what)
    elif s.startswith("0y"):
        if s[2:] and set(s[2:]) <= {"0", "1"}:
            return fits(int(s[2:], 2), bits, what)
    else:
        m = _HEX.fullmatch(s)
        if m:
            return fits(int(m.group(1), 16), bits, what)
    raise InputError(f"{what}: {_shown(text)} is not a hex number (forms: 0x1f, 1f, 00000000`0000001f, 0n31)")


def parse_count(text: Union[str, int], *, what: str = "number") -> int:
    """A processor, line or stop number as typed: decimal unless it says 0x (or 0n, 0y)."""
    if isinstance(text, str) and _DEC.fullmatch(text.strip()):
        digits = text.strip()
        if len(digits) > 10:
            raise InputError(f"{what}: {_shown(text)} is too large")
        return int(digits, 10)
    if isinstance(text, str) and not text.strip().lower().startswith(("0x", "0n", "0y")):
        raise InputError(f"{what}: {_shown(text)} is not a number (decimal, or 0x1f for hex)")
    return parse_int(text, what=what)


def fits(value: int, bits: Optional[int], what: str = "value") -> int:
    """`value` when it fits in `bits` (None: any width); else InputError saying it is too wide."""
    if bits is not None and value >> bits:
        shown = hexs(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit number"
        raise InputError(f"{what}: {shown} is too wide (a {bits}-bit value)")
    return value


def vmcs_field_bits(encoding: int) -> int:
    """The width of the VMCS field with this encoding: bits 14:13 (0 16-bit, 1 64-bit, 2 32-bit,
    3 natural width, 64 on a 64-bit processor); the high half of a 64-bit field (bit 0 set) is 32
    bits (SDM Vol.3D Appendix B, 325462-080US)."""
    width = encoding >> 13 & 3
    if width == 1 and encoding & 1:
        return 32
    return (16, 64, 32, 64)[width]


def _shown(text: str, limit: int = 40) -> str:
    """repr(text), cut to `limit` characters: an error line stays short whatever was typed."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit - 4] + "...'"


def hexs(value: int) -> str:
    """The canonical hex string of the file formats: lower case, 0x prefix."""
    return f"0x{value:x}"


def windbg_hex(value: int) -> str:
    """A 64-bit value as WinDbg prints it: `00000000`80000021`."""
    s = f"{value & 0xFFFFFFFFFFFFFFFF:016x}"
    return f"{s[:8]}`{s[8:]}"


def bits_of(value: int) -> list:
    """Indices of the set bits of `value`, lowest first."""
    out = []
    i = 0
    while value:
        if value & 1:
            out.append(i)
        value >>= 1
        i += 1
    return out
