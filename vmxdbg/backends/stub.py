"""Machine code that reads many MSRs and CPUID leaves in one go, for a debugger to inject.

A debugger without RDMSR/CPUID commands (Bochs' debugger; a kernel debugger on a
target that must not be resumed) can write a stub into the target, point RIP at
it, step it, and read the results from memory. `build(reads)` assembles one stub
for a list of `Read`s; `parse(stub, data)` turns the results buffer back into
values. The code is 64-bit, position independent, uses RAX, RBX, RCX, RDX and
RFLAGS (the caller restores them) and writes only to the results buffer, whose
linear address the caller puts in RDI.

Layout of `Stub.code` (offsets in `Stub`):

    invd                                  flush a trace cache (Bochs: decode fresh bytes)
    for each read:   [guard]  body        body stores the result at [rdi + slot]
    invd                                  `end_invd`
    jmp $                                 `end`: extra steps spin here
    add rsp, 8 ; iretq                    `unwind`: back out of an exception frame

A read may have a guard: it runs only when a bit of an earlier read's result is
set (e.g. IA32_VMX_PROCBASED_CTLS2 only when IA32_VMX_PROCBASED_CTLS[63] is 1,
Vol.3D A.3.3, SDM 325462-080US, 2023). The buffer must be zero before the stub
runs, so a skipped read's bits read as 0 in later guards. A read marked `risky`
(an MSR that may not exist) is kept out of the straight-line part: it gets its
own entry point (`Stub.risky[i]`: mov ecx; rdmsr; two stores; jmp $) so the
caller steps it alone and can undo the #GP it may raise with the `unwind` code.

Instruction encodings: Vol.2 (SDM 325462-080US, 2023): MOV r32, imm32 (B8+r),
MOV r/m32, r32 (89 /r, mod 10 r/m 111 = [rdi+disp32]), BT r/m32, imm8 (0F BA /4),
JNC rel8 (73), CPUID (0F A2), RDMSR (0F 32), INVD (0F 08), JMP rel8 (EB),
ADD r/m64, imm8 (48 83 /0), IRETQ (48 CF).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

INVD = b"\x0f\x08"
JMP_SELF = b"\xeb\xfe"
UNWIND = b"\x48\x83\xc4\x08\x48\xcf"          # add rsp, 8 ; iretq
_REG = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3}


@dataclass(frozen=True)
class Read:
    """One CPUID leaf (`kind` "cpuid", `index` = leaf) or MSR (`kind` "rdmsr", `index` = MSR).

    `guard`: run only if any of these bits is set, each (position of an earlier read in the
    list, bit of its result: 0-63 of an MSR; 0-127 of a CPUID result, EAX bits 0-31, EBX
    32-63, ECX 64-95, EDX 96-127). `risky`: an MSR that may not exist (may raise #GP)."""

    kind: str
    index: int
    subleaf: int = 0
    guard: Tuple[Tuple[int, int], ...] = ()
    risky: bool = False

    @property
    def size(self) -> int:
        return 16 if self.kind == "cpuid" else 8


@dataclass
class Stub:
    code: bytes
    buffer_offset: int                 # the results buffer follows the code at this offset
    buffer_size: int
    slots: List[int]                   # each read's result offset in the buffer
    straight_steps: int                # instructions from offset 0 to `end` at most
    end_invd: int
    end: int
    unwind: int
    risky: Dict[int, int] = field(default_factory=dict)   # read position -> entry offset
    insn_at: Dict[int, int] = field(default_factory=dict)  # read position -> offset of its CPUID/RDMSR

    @property
    def size(self) -> int:
        return self.buffer_offset + self.buffer_size


def _mov_imm(reg: str, value: int) -> bytes:
    return bytes([0xB8 + _REG[reg]]) + struct.pack("<I", value & 0xFFFFFFFF)


def _store(reg: str, disp: int) -> bytes:
    return bytes([0x89, 0x87 | _REG[reg] << 3]) + struct.pack("<i", disp)


def _bt(disp: int, bit: int) -> bytes:
    return b"\x0f\xba\xa7" + struct.pack("<i", disp) + bytes([bit])


def build(reads: Sequence[Read]) -> Stub:
    """One stub for `reads` (guards name earlier, non-risky reads)."""
    slots, at = [], 0
    for r in reads:
        if r.kind not in ("cpuid", "rdmsr") or not 0 <= r.index <= 0xFFFFFFFF:
            raise ValueError(f"not a read: {r}")
        slots.append(at)
        at += r.size
    for i, r in enumerate(reads):
        for pos, bit in r.guard:
            if not 0 <= pos < i or reads[pos].risky or not 0 <= bit < reads[pos].size * 8:
                raise ValueError(f"read {i}: guard ({pos}, {bit}) is not a bit of an earlier safe read")
    # code size does not depend on the buffer's place: assemble twice, with the real offset
    code, info = _assemble(reads, slots, 0)
    code, info = _assemble(reads, slots, len(code))
    return Stub(code, len(code), at, slots, **info)  # type: ignore[arg-type]


def _assemble(reads: Sequence[Read], slots: List[int], buffer_at: int) -> Tuple[bytes, dict]:
    # RDI points at the buffer: displacements are relative to it
    out = bytearray(INVD)
    steps = 1
    insn_at: Dict[int, int] = {}

    def body(i: int, r: Read) -> bytes:
        d = slots[i]
        if r.kind == "cpuid":
            return (_mov_imm("eax", r.index) + _mov_imm("ecx", r.subleaf) + b"\x0f\xa2" + _store("eax", d)
                    + _store("ebx", d + 4) + _store("ecx", d + 8) + _store("edx", d + 12))
        return _mov_imm("ecx", r.index) + b"\x0f\x32" + _store("eax", d) + _store("edx", d + 4)

    for i, r in enumerate(reads):
        if r.risky:
            continue
        b = body(i, r)
        if r.guard:
            # any guard bit set -> run the body; else jump over it
            tests = bytearray()
            for k, (pos, bit) in enumerate(r.guard):
                tests += _bt(slots[pos] + bit // 32 * 4, bit % 32)
                last = k == len(r.guard) - 1
                skip = len(b) if last else None
                if last:
                    tests += b"\x73" + bytes([skip])                  # jnc over the body
                else:
                    # jc into the body: over the remaining tests (each 8 + 2 bytes)
                    rest = (len(r.guard) - k - 1) * 10
                    tests += b"\x72" + bytes([rest])
                steps += 2
            out += tests
        insn_at[i] = len(out) + (10 if r.kind == "cpuid" else 5)
        out += b
        steps += 7 if r.kind == "cpuid" else 4
    end_invd = len(out)
    out += INVD
    end = len(out)
    out += JMP_SELF
    steps += 1
    unwind = len(out)
    out += UNWIND
    risky: Dict[int, int] = {}
    for i, r in enumerate(reads):
        if r.risky:
            risky[i] = len(out)
            insn_at[i] = len(out) + 5
            out += body(i, r) + JMP_SELF
    return bytes(out), {"straight_steps": steps, "end_invd": end_invd, "end": end, "unwind": unwind,
                        "risky": risky, "insn_at": insn_at}


Value = Union[int, Tuple[int, int, int, int]]


def parse(stub: Stub, reads: Sequence[Read], data: bytes, faulted: Sequence[int] = ()) -> List[Optional[Value]]:
    """Each read's result from the buffer bytes: an int (MSR) or (eax, ebx, ecx, edx) (CPUID);
    None where its guard skipped it or it is in `faulted` (it raised an exception)."""
    out: List[Optional[Value]] = []
    for i, r in enumerate(reads):
        d = stub.slots[i]
        chunk = data[d:d + r.size]
        if i in faulted or (r.guard and not any(_bit(data, stub.slots[p], b) for p, b in r.guard)):
            out.append(None)
        elif r.kind == "cpuid":
            out.append(struct.unpack("<4I", chunk))  # type: ignore[arg-type]
        else:
            out.append(struct.unpack("<Q", chunk)[0])
    return out


def _bit(data: bytes, slot: int, bit: int) -> bool:
    return bool(data[slot + bit // 8] >> (bit % 8) & 1)
