"""The stand-in's processor: executes, with iced-x86, the code a debugger wrote at RIP.

The driver's own code is scripted (FakeTarget.stops / on_step); code written
through `writeBytes` is executed here instruction by instruction, when a
processor's RIP points into it and the target runs (go) or steps (trace).
Only what an injected stub may contain is modelled; anything else is #UD,
so a stub that strays is caught, not imagined.

Architecture followed (SDM 325462-080US, 2023):
- CPUID from the processor's table; a leaf it does not list reads as zeros;
- VMX instructions (Vol.3C 31.2, 31.3): #UD outside VMX operation; in VMX
  non-root operation they cause a VM exit, and the outer hypervisor modelled
  here answers it the way Hyper-V does for a VM without nested
  virtualization, by injecting #UD (`FakeProcessor.non_root_answer`); #GP
  at CPL > 0; VMPTRST stores the current-VMCS pointer (all ones when there is
  none); VMREAD/VMWRITE with no current VMCS: VMfailInvalid (CF=1); a field
  the processor does not support: VMfailValid with error 12 written to the
  VM-instruction error field; VMWRITE of a read-only (VM-exit information)
  field without IA32_VMX_MISC[29]: VMfailValid 13; VMsucceed clears CF, PF,
  AF, ZF, SF and OF;
- a write to a page the processor may not write (code) is #PF;
- INT3 is a breakpoint; Windows reports it with RIP at the INT3 itself
  (KiBreakpointTrap backs RIP up by one), which is what the debugger shows.

An exception is reported to the debugger as a first-chance exception at the
faulting instruction, with the registers as they were before it.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import iced_x86 as ix

CF, PF, AF, ZF, SF, OF = 1, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11
ARITH = CF | PF | AF | ZF | SF | OF
VM_INSTRUCTION_ERROR = 0x4400
MISC = 0x485
NO_VMCS = 0xFFFFFFFFFFFFFFFF
M64 = (1 << 64) - 1
SUBLEAF_LEAVES = frozenset({4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F})
_NAMES = {getattr(ix.Register, n): n.lower() for n in dir(ix.Register) if n.isupper()}


class CpuFault(Exception):
    """An exception the instruction raised: vector name and why."""

    def __init__(self, vector: str, why: str) -> None:
        super().__init__(f"{vector}: {why}")
        self.vector, self.why = vector, why


def _full(reg: int) -> Tuple[str, int]:
    info = ix.RegisterInfo(reg)
    return _NAMES[info.full_register], info.size


class Cpu:
    """One processor of a FakeTarget while it executes written code."""

    def __init__(self, target: Any, cpu: int) -> None:
        self.t, self.cpu = target, cpu
        self.p = target.processors[cpu]

    # ---------------------------------------------------------------- state
    def get(self, reg: int) -> int:
        name, size = _full(reg)
        value = self.p.regs.get(name, 0)
        return value & ((1 << (8 * size)) - 1)

    def set(self, reg: int, value: int) -> None:
        name, size = _full(reg)
        if size == 8 or size == 4:        # a 32-bit write zero-extends (Vol.1 3.4.1.1)
            self.p.regs[name] = value & ((1 << (8 * size)) - 1)
        else:
            mask = (1 << (8 * size)) - 1
            self.p.regs[name] = (self.p.regs.get(name, 0) & ~mask) | (value & mask)

    def flags(self, set_: int = 0, clear: int = 0) -> None:
        self.p.regs["efl"] = (self.p.regs["efl"] | set_) & ~clear

    def ea(self, ins: ix.Instruction) -> int:
        if ins.memory_base == ix.Register.RIP:
            return ins.ip_rel_memory_address
        ea = ins.memory_displacement
        if ins.memory_base != ix.Register.NONE:
            ea += self.get(ins.memory_base)
        if ins.memory_index != ix.Register.NONE:
            ea += self.get(ins.memory_index) * ins.memory_index_scale
        return ea & M64

    def load(self, address: int, size: int) -> int:
        data = self.t.virtual.read(address, size)
        if data is None:
            raise CpuFault("#PF", f"read of unmapped 0x{address:x}")
        return int.from_bytes(data, "little")

    def store(self, address: int, size: int, value: int) -> None:
        if not self.t.cpu_may_write(address, size):
            raise CpuFault("#PF", f"write to 0x{address:x}, a page the processor may not write")
        self.t.virtual.add(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    # ---------------------------------------------------------------- VMX
    def _vmx_checks(self, what: str) -> None:
        if self.p.vmx == "off":
            raise CpuFault("#UD", f"{what} outside VMX operation")
        if self.p.vmx == "non-root":
            raise CpuFault(self.p.non_root_answer, f"{what} in VMX non-root operation: VM exit, the outer "
                                                   "hypervisor injected " + self.p.non_root_answer)
        if self.p.regs.get("cs", 0) & 3:
            raise CpuFault("#GP", f"{what} at CPL {self.p.regs['cs'] & 3}")

    def _succeed(self) -> None:
        self.flags(clear=ARITH)

    def _fail_invalid(self) -> None:
        self.flags(set_=CF, clear=ARITH & ~CF)

    def _fail_valid(self, error: int) -> None:
        self.flags(set_=ZF, clear=ARITH & ~ZF)
        self.p.vmcs[VM_INSTRUCTION_ERROR] = error

    def _field(self, encoding: int) -> Optional[str]:
        """None if the processor may access the field, else why not ('invalid', 'unsupported')."""
        if self.p.vmcs_pointer is None:
            return "invalid"
        if encoding not in self.p.supported_fields:
            return "unsupported"
        return None

    # ---------------------------------------------------------------- one instruction
    def step(self) -> Optional[str]:
        """Execute the instruction at RIP; returns "int3" at an INT3 (RIP left on it), else None.
        Raises CpuFault with RIP and the registers unchanged."""
        rip = self.p.regs["rip"]
        code = self.t.read_code(rip)
        if code is None:
            raise CpuFault("#PF", f"instruction fetch from unmapped 0x{rip:x}")
        ins = next(iter(ix.Decoder(64, code, ip=rip)))
        if ins.code == ix.Code.INVALID:
            raise CpuFault("#UD", f"undecodable bytes at 0x{rip:x}")
        saved = dict(self.p.regs)
        try:
            stop = self._execute(ins)
        except CpuFault:
            self.p.regs.clear()
            self.p.regs.update(saved)
            raise
        if stop:
            return stop
        if self.p.regs["rip"] == rip:
            self.p.regs["rip"] = ins.next_ip
        return None

    def _execute(self, ins: ix.Instruction) -> Optional[str]:   # noqa: C901 (one branch per mnemonic)
        m = ins.mnemonic
        mem = ins.op_count > 0 and ix.OpKind.MEMORY in [ins.op_kind(i) for i in range(ins.op_count)]
        if m == ix.Mnemonic.INT3:
            return "int3"
        if m == ix.Mnemonic.NOP:
            return None
        if m == ix.Mnemonic.XOR and ins.op0_kind == ix.OpKind.REGISTER and ins.op1_kind == ix.OpKind.REGISTER:
            value = self.get(ins.op0_register) ^ self.get(ins.op1_register)
            self.set(ins.op0_register, value)
            self.flags(set_=ZF if value == 0 else 0, clear=ARITH if value else ARITH & ~ZF)
            return None
        if m == ix.Mnemonic.LEA:
            self.set(ins.op0_register, self.ea(ins))
            return None
        if m == ix.Mnemonic.MOV:
            if ins.op0_kind == ix.OpKind.REGISTER:
                if ins.op1_kind == ix.OpKind.REGISTER:
                    value = self.get(ins.op1_register)
                elif ins.op1_kind == ix.OpKind.MEMORY:
                    value = self.load(self.ea(ins), ix.RegisterInfo(ins.op0_register).size)
                else:
                    value = ins.immediate(1)
                self.set(ins.op0_register, value)
            else:
                size = ix.RegisterInfo(ins.op1_register).size
                self.store(self.ea(ins), size, self.get(ins.op1_register))
            return None
        if m in (ix.Mnemonic.ADD, ix.Mnemonic.DEC, ix.Mnemonic.TEST):
            size = ix.RegisterInfo(ins.op0_register).size
            mask = (1 << (8 * size)) - 1
            a = self.get(ins.op0_register)
            if m == ix.Mnemonic.ADD:
                total = a + ins.immediate(1)
                value = total & mask
                self.set(ins.op0_register, value)
                self.flags(set_=(CF if total > mask else 0), clear=CF)
            elif m == ix.Mnemonic.DEC:
                value = (a - 1) & mask
                self.set(ins.op0_register, value)
            else:
                value = a & self.get(ins.op1_register)
                self.flags(clear=CF | OF)
            self.flags(set_=ZF if value == 0 else 0, clear=0 if value == 0 else ZF)
            return None
        if m in (ix.Mnemonic.JE, ix.Mnemonic.JNE):
            zf = bool(self.p.regs["efl"] & ZF)
            if zf == (m == ix.Mnemonic.JE):
                self.p.regs["rip"] = ins.near_branch_target
            else:
                self.p.regs["rip"] = ins.next_ip
            return None
        if m in (ix.Mnemonic.LODSD, ix.Mnemonic.LODSW):
            if self.p.regs["efl"] & (1 << 10):
                raise CpuFault("#UD", "the stand-in models LODS with DF=0 only")
            size = 4 if m == ix.Mnemonic.LODSD else 2
            value = self.load(self.p.regs["rsi"], size)
            self.set(ix.Register.EAX if size == 4 else ix.Register.AX, value)
            self.p.regs["rsi"] = (self.p.regs["rsi"] + size) & M64
            return None
        if m in (ix.Mnemonic.SETB, ix.Mnemonic.SETE) and mem:
            bit = CF if m == ix.Mnemonic.SETB else ZF
            self.store(self.ea(ins), 1, 1 if self.p.regs["efl"] & bit else 0)
            return None
        if m == ix.Mnemonic.CPUID:
            leaf, sub = self.get(ix.Register.EAX), self.get(ix.Register.ECX)
            regs = self.p.cpuid.get((leaf, sub))
            if regs is None and leaf not in SUBLEAF_LEAVES:    # ECX is ignored by leaves without subleaves
                regs = self.p.cpuid.get((leaf, 0))
            eax, ebx, ecx, edx = regs or (0, 0, 0, 0)
            for reg, value in zip((ix.Register.RAX, ix.Register.RBX, ix.Register.RCX, ix.Register.RDX),
                                  (eax, ebx, ecx, edx)):
                self.set(reg, value & 0xFFFFFFFF)
            return None
        if m == ix.Mnemonic.VMPTRST:
            self._vmx_checks("VMPTRST")
            pointer = NO_VMCS if self.p.vmcs_pointer is None else self.p.vmcs_pointer
            self.store(self.ea(ins), 8, pointer)
            self._succeed()
            return None
        if m == ix.Mnemonic.VMREAD and not mem:
            self._vmx_checks("VMREAD")
            encoding = self.get(ins.op1_register)
            why = self._field(encoding)
            if why == "invalid":
                self._fail_invalid()
            elif why == "unsupported":
                self._fail_valid(12)
            else:
                self.set(ins.op0_register, self.p.vmcs.get(encoding, 0))
                self._succeed()
            return None
        if m == ix.Mnemonic.VMWRITE and not mem:
            self._vmx_checks("VMWRITE")
            encoding, value = self.get(ins.op0_register), self.get(ins.op1_register)
            why = self._field(encoding)
            if why == "invalid":
                self._fail_invalid()
            elif why == "unsupported":
                self._fail_valid(12)
            elif encoding >> 10 & 3 == 1 and not self.p.msrs.get(MISC, 0) >> 29 & 1:
                self._fail_valid(13)        # read-only field (Vol.3C 31.3 VMWRITE)
            else:
                self.p.vmcs[encoding] = value
                self._succeed()
            return None
        raise CpuFault("#UD", f"the stand-in does not model {ix.Formatter(ix.FormatterSyntax.INTEL).format(ins)}")


def run(target: Any, cpu: int, limit: int = 100000) -> Tuple[str, str]:
    """Execute from RIP until INT3, a fault, an active breakpoint or leaving written code.

    Returns (kind, detail): ("int3", ""), ("fault", "#UD: ..."), ("breakpoint", ""),
    ("left", "") when RIP leaves the written code (the scripted driver goes on)."""
    c = Cpu(target, cpu)
    active = set(target.breakpoints.values())
    for n in range(limit):
        rip = c.p.regs["rip"]
        if n and rip in active:
            return "breakpoint", ""
        if not target.is_written(rip):
            return "left", ""
        try:
            if c.step() == "int3":
                return "int3", ""
        except CpuFault as exc:
            return "fault", str(exc)
    return "running", f"still executing after {limit} instructions"

