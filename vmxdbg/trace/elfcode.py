"""VMX instructions in a relocatable ELF64 object (a Linux kernel module, .ko).

The module's code sections are decoded with iced-x86 function by function
(from each STT_FUNC symbol of .symtab, so padding and data between functions
never desynchronise the decoder), or the whole section when it has no
function symbols. Each VMX instruction is reported as (section, offset,
length, mnemonic, function); the loaded address is the section's load address
(e.g. from /sys/module/NAME/sections/) plus the offset.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..common.errors import InputError
from .stepper import find_vmx_instructions

SHF_EXECINSTR = 0x4
SHT_SYMTAB = 2
STT_FUNC = 2


@dataclass(frozen=True)
class ModuleSite:
    """One VMX instruction in a module: where it is and what it is."""

    section: str
    offset: int
    length: int
    instruction: str
    function: str


@dataclass
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int


def _sections(data: bytes, source: str) -> List[_Section]:
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise InputError(f"{source}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise InputError(f"{source}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shentsize != 64 or shoff + shnum * 64 > len(data) or shstrndx >= shnum:
        raise InputError(f"{source}: section header table out of the file")
    raw = []
    for i in range(shnum):
        name, typ, flags, _addr, off, size, link = struct.unpack_from("<IIQQQQI", data, shoff + i * 64)
        raw.append((name, typ, flags, off, size, link))
    strtab_off, strtab_size = raw[shstrndx][3], raw[shstrndx][4]

    def name_at(i: int) -> str:
        end = data.find(b"\0", strtab_off + i, strtab_off + strtab_size)
        return data[strtab_off + i:end].decode("ascii", "replace") if end >= 0 else "?"
    return [_Section(name_at(n), t, f, o, s, lk) for n, t, f, o, s, lk in raw]


def _functions(data: bytes, secs: List[_Section]) -> Dict[int, List[Tuple[int, int, str]]]:
    """section index -> [(offset, size, name)] of its function symbols."""
    out: Dict[int, List[Tuple[int, int, str]]] = {}
    for sec in secs:
        if sec.type != SHT_SYMTAB:
            continue
        strs = secs[sec.link] if sec.link < len(secs) else None
        for k in range(sec.size // 24):
            name_i, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", data, sec.offset + k * 24)
            if info & 0xF != STT_FUNC or size == 0 or shndx >= len(secs):
                continue
            name = "?"
            if strs is not None:
                end = data.find(b"\0", strs.offset + name_i)
                name = data[strs.offset + name_i:end].decode("ascii", "replace")
            out.setdefault(shndx, []).append((value, size, name))
    return out


def _code_sections(data: bytes, source: str, sections: Optional[List[str]]) -> Iterator[Tuple[Any, bytes, List[Tuple[int, int, str]]]]:
    """(section, its bytes, its functions as sorted (start, size, name)) of every executable section
    of an ELF64 object (`sections`: only those names); InputError for one that runs past the file."""
    secs = _sections(data, source)
    funcs = _functions(data, secs)
    for i, sec in enumerate(secs):
        if not sec.flags & SHF_EXECINSTR or (sections is not None and sec.name not in sections):
            continue
        if sec.offset + sec.size > len(data):
            raise InputError(f"{source}: section {sec.name} runs past the end of the file")
        yield sec, data[sec.offset:sec.offset + sec.size], sorted(set(funcs.get(i, [])))


def module_vmx_sites(data: bytes, source: str = "module", sections: Optional[List[str]] = None) -> List[ModuleSite]:
    """Every VMXON, VMCLEAR, VMPTRLD, VMLAUNCH, VMRESUME in the code sections of an ELF64 object
    (`sections`: only those names)."""
    sites: List[ModuleSite] = []
    for sec, body, functions in _code_sections(data, source, sections):
        ranges = functions or [(0, sec.size, sec.name)]
        seen = set()
        for start, size, fname in ranges:
            for s in find_vmx_instructions(body[start:start + size], start):
                if s.address not in seen:
                    seen.add(s.address)
                    sites.append(ModuleSite(sec.name, s.address, s.length, s.instruction, fname))
    return sorted(sites, key=lambda s: (s.section, s.offset))


def approaches(data: bytes, source: str = "module", sections: Optional[List[str]] = None) -> List[ModuleSite]:
    """The instructions that lead straight into a VMX instruction of the object (one vmxdbg steps
    through), in the same function: the one before it when execution falls through (not a jump,
    call or return), and every jump to it. Breaking there and stepping once reaches the VMX
    instruction even when Bochs misses the breakpoint on it (docs/bochs.md, "Execution and
    missed stops"), and shows what ran just before a VM entry (vmxdbg.trace.stepper.Stepper's
    `approaches`). `instruction` is the approach's mnemonic; approaches that are VMX
    instructions themselves are left out (they are stops already)."""
    import iced_x86 as ix
    out: List[ModuleSite] = []
    for sec, body, functions in _code_sections(data, source, sections):
        for start, size, fname in functions:
            vmx = {s.address for s in find_vmx_instructions(body[start:start + size], start)}
            if not vmx:
                continue
            for ins in ix.Decoder(64, body[start:start + size], ip=start):
                flow = ins.flow_control
                falls = flow in (ix.FlowControl.NEXT, ix.FlowControl.CONDITIONAL_BRANCH) and ins.next_ip in vmx
                jumps = flow in (ix.FlowControl.CONDITIONAL_BRANCH, ix.FlowControl.UNCONDITIONAL_BRANCH) and \
                    ins.near_branch_target in vmx
                if (falls or jumps) and ins.ip not in vmx and not ins.is_invalid:
                    out.append(ModuleSite(sec.name, ins.ip, ins.len, ix.Formatter(ix.FormatterSyntax.INTEL)
                                          .format(ins).split()[0], fname))
    return sorted(out, key=lambda s: (s.section, s.offset))


def symbol_value(data: bytes, name: str, source: str = "ELF file") -> int:
    """The value (for an executable: the address) of symbol `name` in .symtab."""
    secs = _sections(data, source)
    for sec in secs:
        if sec.type != SHT_SYMTAB:
            continue
        strs = secs[sec.link]
        for k in range(sec.size // 24):
            name_i, _info, _other, _shndx, value, _size = struct.unpack_from("<IBBHQQ", data, sec.offset + k * 24)
            end = data.find(b"\0", strs.offset + name_i)
            if data[strs.offset + name_i:end] == name.encode():
                return value
    raise InputError(f"{source}: no symbol {name}")


__all__ = ["ModuleSite", "approaches", "module_vmx_sites", "symbol_value"]
