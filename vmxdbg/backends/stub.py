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
    cld
    for each block of reads with the same guard:
        [bt ...; jc/jnc]  bodies  [jmp over; xor eax, eax; mov ecx, n; rep stosd]
    invd                                  `end_invd`
    jmp $                                 `end`: extra steps spin here
    add rsp, 8 ; iretq                    `unwind`: back out of an exception frame

The results buffer is `buffer_offset` bytes into the stub: after the code, or
at offset 0 when every store lands on code that has already run (and before
the tail), so the stub covers fewer bytes. A read may have a guard: it runs only when a bit of an earlier read's result is
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
        """Bytes the stub covers: its code, and the buffer where it does not overlap the code."""
        return max(len(self.code), self.buffer_offset + self.buffer_size)


def _mov_imm(reg: str, value: int) -> bytes:
    return bytes([0xB8 + _REG[reg]]) + struct.pack("<I", value & 0xFFFFFFFF)


def _store(reg: str, disp: int) -> bytes:
    return bytes([0x89, 0x87 | _REG[reg] << 3]) + struct.pack("<i", disp)


def _bt(disp: int, bit: int) -> bytes:
    return b"\x0f\xba\xa7" + struct.pack("<i", disp) + bytes([bit])


def build(reads: Sequence[Read]) -> Stub:
    """One stub for `reads` (guards name earlier, non-risky reads)."""
    for i, r in enumerate(reads):
        if r.kind not in ("cpuid", "rdmsr") or not 0 <= r.index <= 0xFFFFFFFF or not 0 <= r.subleaf <= 0xFFFFFFFF:
            raise ValueError(f"not a read: {r}")
        for pos, bit in r.guard:
            if not 0 <= pos < i or reads[pos].risky or not 0 <= bit < reads[pos].size * 8:
                raise ValueError(f"read {i}: guard ({pos}, {bit}) is not a bit of an earlier safe read")
    # the straight-line reads fill the buffer in order (STOSD), the risky ones after them
    order = [i for i, r in enumerate(reads) if not r.risky] + [i for i, r in enumerate(reads) if r.risky]
    slots, at = [0] * len(reads), 0
    for i in order:
        slots[i] = at
        at += reads[i].size
    code, info = _assemble(reads, slots)
    writes = info.pop("writes")
    # the results may go over code that has already run (fewer bytes to write back): when every
    # store lands wholly before the instruction that makes it and before the tail (the final
    # INVD, JMP $ and the unwind code, needed later)
    overlap = all(end <= pos and end <= info["end_invd"] for pos, _, end in writes)
    return Stub(code, 0 if overlap else len(code), at, slots, **info)  # type: ignore[arg-type]


def _body(r: Read, ecx: Optional[int]) -> bytes:
    """The read, its result stored with STOSD at RDI (which advances); `ecx`: ECX before it."""
    if r.kind == "cpuid":
        sub = b"\x31\xc9" if r.subleaf == 0 else _mov_imm("ecx", r.subleaf)         # xor ecx, ecx
        # cpuid; stosd; mov eax, ebx; stosd; mov eax, ecx; stosd; mov eax, edx; stosd
        return _mov_imm("eax", r.index) + sub + b"\x0f\xa2\xab\x89\xd8\xab\x89\xc8\xab\x89\xd0\xab"
    # ECX survives RDMSR: the next MSR of a run is `inc ecx`; rdmsr; stosd; xchg eax, edx; stosd
    load = b"\xff\xc1" if ecx is not None and r.index == ecx + 1 else _mov_imm("ecx", r.index)
    return load + b"\x0f\x32\xab\x92\xab"


def _body_steps(r: Read) -> int:
    return 10 if r.kind == "cpuid" else 5


def _assemble(reads: Sequence[Read], slots: List[int]) -> Tuple[bytes, dict]:
    out = bytearray(INVD + b"\xfc")                    # invd; cld (STOSD counts up)
    steps = 2
    insn_at: Dict[int, int] = {}
    writes: List[Tuple[int, int, int]] = []          # (offset of a store, first and end byte it writes)

    def stores(i: int, insn: int) -> None:
        """The STOSDs after read i's CPUID/RDMSR at code offset `insn`."""
        after = (2, 5, 8, 11) if reads[i].kind == "cpuid" else (2, 4)
        writes.extend((insn + d, slots[i] + 4 * k, slots[i] + 4 * k + 4) for k, d in enumerate(after))
    straight = [i for i, r in enumerate(reads) if not r.risky]
    k = 0
    while k < len(straight):
        # a block: consecutive reads with the same guard share one test
        guard = reads[straight[k]].guard
        block = [straight[k]]
        while k + len(block) < len(straight) and reads[straight[k + len(block)]].guard == guard:
            block.append(straight[k + len(block)])
        k += len(block)
        body = bytearray()
        ecx: Optional[int] = None
        offsets = {}
        for i in block:
            r = reads[i]
            piece = _body(r, ecx)
            offsets[i] = len(body) + len(piece) - (12 if r.kind == "cpuid" else 5)   # the CPUID/RDMSR
            body += piece
            ecx = r.index if r.kind == "rdmsr" else None
            steps += _body_steps(r)
        if not guard:
            for i in block:
                insn_at[i] = len(out) + offsets[i]
                stores(i, insn_at[i])
            out += body
            continue
        size = sum(reads[i].size for i in block)
        # skipped: zero its slots (later guards test them): xor eax, eax; mov ecx, n; rep stosd
        zero = b"\x31\xc0" + _mov_imm("ecx", size // 4) + b"\xf3\xab"
        body += b"\xeb" + bytes([len(zero)])          # jmp over the zeroing
        tests = bytearray()
        here = slots[block[0]]                        # RDI at this point: buffer + here
        for n, (pos, bit) in enumerate(guard):
            disp = slots[pos] + bit // 32 * 4 - here
            tests += (b"\x0f\xba\x67" + struct.pack("<b", disp) if -128 <= disp <= 127
                      else b"\x0f\xba\xa7" + struct.pack("<i", disp)) + bytes([bit % 32])
            tests.append(0)                           # placeholder: the jump, patched below
            tests.append(0)
            steps += 2
        # patch the jumps: jc into the body after any test but the last; the last jnc to the zeroing
        pos_jumps = []
        at = 0
        for pos, bit in guard:
            disp = slots[pos] + bit // 32 * 4 - here
            at += 5 if -128 <= disp <= 127 else 8
            pos_jumps.append(at)
            at += 2
        end_tests = len(tests)
        for n, j in enumerate(pos_jumps):
            last = n == len(pos_jumps) - 1
            target = end_tests + (len(body) if last else 0)
            rel = target - (j + 2)
            if not 0 <= rel <= 127:
                raise ValueError("a guarded block is too long for a short jump")
            tests[j], tests[j + 1] = (0x73 if last else 0x72), rel
        for i in block:
            insn_at[i] = len(out) + len(tests) + offsets[i]
            stores(i, insn_at[i])
        rep_at = len(out) + len(tests) + len(body) + 7
        writes.append((rep_at, slots[block[0]], slots[block[0]] + size))
        out += tests + body + zero
        steps += 1 + 3 + size // 4                    # jmp, or xor/mov/rep stosd (a step per iteration)
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
            stores(i, insn_at[i])
            out += _body(r, None) + JMP_SELF
    return bytes(out), {"straight_steps": steps, "end_invd": end_invd, "end": end, "unwind": unwind,
                        "risky": risky, "insn_at": insn_at, "writes": writes}


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
