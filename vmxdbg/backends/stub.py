"""Machine code vmxdbg runs on a stopped processor, shared by the backends that inject it.

The Bochs backend steps one RDMSR or CPUID at a time (`RDMSR`, `CPUID` below);
the WinDbg backend runs one batch (`batch_stub`): every CPUID leaf a check
needs and, in VMX root operation, VMPTRST and one VMREAD per VMCS field, all
in one run that ends in INT3, so a KD link pays one resume for all of them.

Encodings (64-bit mode, SDM 325462-080US, 2023, Vol.2 and Vol.3C 31.3):
CPUID 0F A2, RDMSR 0F 32, VMPTRST m64 0F C7 /7, VMREAD r/m64, r64 0F 78 /r
(ModRM.reg = the field encoding, ModRM.rm = the destination), VMWRITE r64,
r/m64 0F 79 /r (ModRM.reg = the field encoding, ModRM.rm = the value), INT3 CC.

Batch layout. The stub is code plus its input table (read-only data: CPUID
leaf/subleaf pairs as dwords, then field encodings as words). Its output goes
on the stack of the processor it runs on, below RSP, in 16-byte records:

    one record per CPUID leaf:  eax, ebx, ecx, edx (dwords)
    then, when VMX is asked:    VMPTRST's pointer (qword), CF, ZF (bytes 8, 9)
    then one per field:         the VMREAD value (qword), CF, ZF (bytes 8, 9)

Before its INT3 the stub moves RSP below the records, so the breakpoint's own
trap frames land below them and the records survive until they are read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

CPUID = b"\x0f\xa2"
RDMSR = b"\x0f\x32"
INT3 = b"\xcc"
VM_INSTRUCTION_ERROR = 0x4400

RECORD = 16          # bytes per output record
GAP = 0x80           # bytes left untouched right below RSP
TRAP_ROOM = 0x2000   # stack below the records the INT3's exception dispatch may use (checked mapped)


@dataclass
class Batch:
    """One assembled batch stub and where its output goes (offsets below the RSP it starts with)."""

    code: bytes
    leaves: Tuple[Tuple[int, int], ...]
    fields: Tuple[int, ...]
    restores_error: bool       # ends with VMWRITE of the saved VM-instruction error
    int3_at: int = 0           # offset of the final INT3 in `code`

    @property
    def vmx(self) -> bool:
        return bool(self.fields)

    @property
    def records(self) -> int:
        return len(self.leaves) + (1 + len(self.fields) if self.fields else 0)

    @property
    def out_size(self) -> int:
        return self.records * RECORD

    @property
    def out_offset(self) -> int:
        """The records start at RSP - out_offset."""
        return GAP + self.out_size

    @property
    def rsp_drop(self) -> int:
        """How far below its starting RSP the stub leaves RSP at the INT3 (16-byte aligned)."""
        return (self.out_offset + 0x40 + 15) & ~15

    def _table(self) -> bytes:
        return b"".join(struct.pack("<II", leaf, sub) for leaf, sub in self.leaves) + \
            b"".join(struct.pack("<H", f) for f in self.fields)


def _rel8(frm: int, to: int) -> bytes:
    delta = to - frm
    if not -128 <= delta <= 127:
        raise ValueError("batch stub: a jump does not fit in rel8")
    return struct.pack("<b", delta)


def batch_stub(leaves: Sequence[Tuple[int, int]], fields: Sequence[int] = (),
               restore_error: bool = False) -> Batch:
    """Assemble the batch: CPUID of each (leaf, subleaf); when `fields` is not empty, VMPTRST
    then VMREAD of each field (16-bit encodings). With `restore_error`, the first field must be
    the VM-instruction error (0x4400); the stub VMWRITEs the value it read back at the end,
    undoing the 12 a VMREAD of an unsupported field writes there (needs IA32_VMX_MISC[29])."""
    leaves = tuple((int(a) & 0xFFFFFFFF, int(b) & 0xFFFFFFFF) for a, b in leaves)
    fields = tuple(int(f) for f in fields)
    if any(not 0 <= f <= 0xFFFF for f in fields):
        raise ValueError("batch stub: field encodings above 0xFFFF are not supported")
    if restore_error and (not fields or fields[0] != VM_INSTRUCTION_ERROR):
        raise ValueError("batch stub: restoring the VM-instruction error needs it read first")
    probe = Batch(b"", leaves, fields, restore_error)
    out, drop = probe.out_offset, probe.rsp_drop
    c = bytearray()
    c += b"\x31\xc0"                                        # xor eax, eax
    lea_rsi = len(c)
    c += b"\x48\x8d\x35" + b"\0\0\0\0"                      # lea rsi, [rip + table]
    c += b"\x48\x8d\xbc\x24" + struct.pack("<i", -out)      # lea rdi, [rsp - out]
    c += b"\x41\xb8" + struct.pack("<I", len(leaves))       # mov r8d, L
    c += b"\x41\xb9" + struct.pack("<I", len(fields))       # mov r9d, N
    c += b"\x45\x85\xc0"                                    # test r8d, r8d
    jz_vmx = len(c)
    c += b"\x74\0"                                          # jz vmx
    cpuid_loop = len(c)
    c += b"\xad"                                            # lodsd            (leaf)
    c += b"\x8b\x0e"                                        # mov ecx, [rsi]   (subleaf)
    c += b"\x48\x83\xc6\x04"                                # add rsi, 4
    c += CPUID                                              # cpuid
    c += b"\x89\x07\x89\x5f\x04\x89\x4f\x08\x89\x57\x0c"    # mov [rdi..rdi+12], eax ebx ecx edx
    c += b"\x48\x83\xc7\x10"                                # add rdi, 16
    c += b"\x41\xff\xc8"                                    # dec r8d
    c += b"\x75" + _rel8(len(c) + 2, cpuid_loop)            # jnz cpuid_loop
    vmx = len(c)
    c[jz_vmx + 1:jz_vmx + 2] = _rel8(jz_vmx + 2, vmx)
    c += b"\x45\x85\xc9"                                    # test r9d, r9d
    jz_done = len(c)
    c += b"\x74\0"                                          # jz done
    c += b"\x0f\xc7\x3f"                                    # vmptrst [rdi]
    c += b"\x0f\x92\x47\x08\x0f\x94\x47\x09"                # setb [rdi+8]; sete [rdi+9]
    c += b"\x31\xc0"                                        # xor eax, eax (lodsw fills ax only)
    vm_loop = len(c)
    c += b"\x48\x83\xc7\x10"                                # add rdi, 16
    c += b"\x66\xad"                                        # lodsw            (field encoding)
    c += b"\x0f\x78\xc2"                                    # vmread rdx, rax
    c += b"\x48\x89\x17"                                    # mov [rdi], rdx
    c += b"\x0f\x92\x47\x08\x0f\x94\x47\x09"                # setb [rdi+8]; sete [rdi+9]
    c += b"\x41\xff\xc9"                                    # dec r9d
    c += b"\x75" + _rel8(len(c) + 2, vm_loop)               # jnz vm_loop
    if restore_error:
        # the first field's record (the VM-instruction error as read) follows the CPUID and VMPTRST records
        first = -out + RECORD * (len(leaves) + 1)
        c += b"\x48\x8b\x94\x24" + struct.pack("<i", first)          # mov rdx, [rsp - out + ...]
        c += b"\xb8" + struct.pack("<I", VM_INSTRUCTION_ERROR)       # mov eax, 0x4400
        c += b"\x0f\x79\xc2"                                          # vmwrite rax, rdx
    done = len(c)
    c[jz_done + 1:jz_done + 2] = _rel8(jz_done + 2, done)
    c += b"\x48\x8d\xa4\x24" + struct.pack("<i", -drop)    # lea rsp, [rsp - drop]
    int3_at = len(c)
    c += INT3
    c[lea_rsi + 3:lea_rsi + 7] = struct.pack("<i", len(c) - (lea_rsi + 7))
    c += probe._table()
    return Batch(bytes(c), leaves, fields, restore_error, int3_at)


@dataclass
class BatchResult:
    cpuid: Dict[Tuple[int, int], Tuple[int, int, int, int]]
    vmcs_pointer: Optional[int]                 # None: not asked, or VMPTRST failed
    fields: Dict[int, int]                      # encodings VMREAD gave
    failed: Dict[int, str]                      # encoding -> "VMfailInvalid" / "VMfailValid"


def parse_batch(batch: Batch, out: bytes) -> BatchResult:
    """The records the stub wrote (`out`: out_size bytes from RSP - out_offset)."""
    if len(out) != batch.out_size:
        raise ValueError(f"batch output: {len(out)} bytes, expected {batch.out_size}")
    cpuid: Dict[Tuple[int, int], Tuple[int, int, int, int]] = {}
    at = 0
    for key in batch.leaves:
        cpuid[key] = struct.unpack_from("<IIII", out, at)   # type: ignore[assignment]
        at += RECORD
    pointer: Optional[int] = None
    fields: Dict[int, int] = {}
    failed: Dict[int, str] = {}

    def status(offset: int) -> Optional[str]:
        cf, zf = out[offset + 8] & 1, out[offset + 9] & 1
        return "VMfailInvalid" if cf else "VMfailValid" if zf else None
    if batch.fields:
        if status(at) is None:
            pointer = struct.unpack_from("<Q", out, at)[0]
        at += RECORD
        for enc in batch.fields:
            why = status(at)
            if why is None:
                fields[enc] = struct.unpack_from("<Q", out, at)[0]
            else:
                failed[enc] = why
            at += RECORD
    return BatchResult(cpuid, pointer, fields, failed)


def field_index(encoding: int) -> int:
    """The index of a VMCS field encoding (bits 9:1, Vol.3D B and A.9)."""
    return encoding >> 1 & 0x1FF


def fields_within_enum(encodings: Sequence[int], vmcs_enum: Optional[int]) -> List[int]:
    """The encodings whose index is at most IA32_VMX_VMCS_ENUM[9:1] (Vol.3D A.9): a VMREAD of a
    higher index fails on that processor, so it is not asked."""
    if vmcs_enum is None:
        return list(encodings)
    top = vmcs_enum >> 1 & 0x1FF
    return [e for e in encodings if field_index(e) <= top]
