"""Machine code vmxdbg runs on a stopped processor, shared by the backends that inject it.

Two kinds of stub:

- `build(reads)` / `parse(...)`: many RDMSRs and CPUID leaves stepped in one go
  (the Bochs backend's one injection per stop);
- `batch_stub(...)` / `parse_batch(...)`: every CPUID leaf a check needs and, in
  VMX root operation, VMPTRST and one VMREAD per VMCS field, run to an INT3
  (the WinDbg backend: a KD link pays one resume for all of them).

Read stubs. A debugger without RDMSR/CPUID commands (Bochs' debugger; a kernel debugger on a
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

Batch stubs. The WinDbg backend runs one batch (`batch_stub`): every CPUID leaf a check
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
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

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


# ---------------------------------------------------------------- read stubs (Bochs)

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
