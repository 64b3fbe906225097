"""What a VM entry sees: effective VMX controls, the guest's mode, address widths.

Shared by the VM-entry rule modules so that each rule states only its own
condition. Every helper reads through the Context, so a missing input is a
Missing (an `unknown` finding naming it), never a default.

Effective controls (SDM Vol.3C 25.6.2, 27.2.1.1; SDM 325462-080US, 2023): a
secondary processor-based control counts as 1 only when "activate secondary
controls" (primary bit 31) is 1, a tertiary control only when "activate
tertiary controls" (primary bit 17) is 1, a secondary VM-exit control only
when VM-exit control bit 31 is 1; otherwise VM entry behaves as if the whole
field were 0 and the field is not even read.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

from ..decode import defs
from ..values import hexs
from .engine import Context

ED = "(SDM 325462-080US, 2023)"

#: control field -> (field that activates it, bit name in that field)
_ACTIVATED_BY: Dict[str, Tuple[str, str]] = {
    "secondary": ("primary", "activate_secondary_controls"),
    "tertiary": ("primary", "activate_tertiary_controls"),
    "secondary_exit": ("exit", "activate_secondary_controls"),
}


def control_value(ctx: Context, control: str) -> int:
    """The value VM entry uses for control field `control` (0 when not activated)."""
    gate = _ACTIVATED_BY.get(control)
    if gate is not None and not control_on(ctx, *gate):
        return 0
    return ctx.vmcs(defs.control(control).vmcs)


def control_on(ctx: Context, control: str, bit: str) -> bool:
    """Whether control `bit` of field `control` is in effect, e.g. ("secondary", "unrestricted_guest")."""
    return bool(control_value(ctx, control) >> defs.control(control).bit(bit) & 1)


def control_label(control: str, bit: str) -> str:
    """`"unrestricted guest" (SECONDARY_VM_EXEC_CONTROL 0x401E bit 7)` for messages."""
    c = defs.control(control)
    return f"\"{bit.replace('_', ' ')}\" ({field_label(c.vmcs)} bit {c.bit(bit)})"


def field_label(field_: Union[int, str]) -> str:
    """`GUEST_CR0 (0x6800)`: a VMCS field by SDM-style name and encoding."""
    f = defs.vmcs_field(field_)
    return f"{f.name} (0x{f.encoding:04X})"


def show(ctx: Context, field_: Union[int, str]) -> str:
    """`GUEST_CR0 (0x6800) = 0x80000031`: a field and its value (reads it)."""
    return f"{field_label(field_)} = {hexs(ctx.vmcs(field_))}"


# ----------------------------------------------------------------- guest mode

def ia32e_guest(ctx: Context) -> bool:
    """The "IA-32e mode guest" VM-entry control (bit 9)."""
    return control_on(ctx, "entry", "ia32e_mode_guest")


def unrestricted(ctx: Context) -> bool:
    """The effective "unrestricted guest" control (0 unless secondary controls are activated)."""
    return control_on(ctx, "secondary", "unrestricted_guest")


def v86_guest(ctx: Context) -> bool:
    """"The guest will be virtual-8086": RFLAGS.VM (bit 17) in the guest RFLAGS field."""
    return bool(ctx.vmcs("GUEST_RFLAGS") >> 17 & 1)


def in_smm(ctx: Context) -> bool:
    """Whether the VM entry starts in system-management mode (state.smm)."""
    return bool(ctx.state("smm"))


# ----------------------------------------------------------------- widths

def intel64(ctx: Context) -> bool:
    """Whether the processor supports Intel 64 architecture.

    CPUID.80000001H:EDX.LM[29] when known; a processor whose IA32_EFER.LMA is 1
    is running in IA-32e mode, which proves it. Otherwise the CPUID leaf is
    reported missing."""
    if (0x80000001, 0) in ctx.p.cpuid:
        return bool(ctx.cpuid(0x80000001)[3] >> 29 & 1)
    if "efer" in ctx.p.registers and ctx.reg("efer") >> 10 & 1:
        return True
    return bool(ctx.cpuid(0x80000001)[3] >> 29 & 1)  # raises Missing


def linear_width(ctx: Context) -> int:
    """The processor's linear-address width, CPUID.80000008H:EAX[15:8] (Vol.3A 4.1.4)."""
    return ctx.cpuid(0x80000008)[0] >> 8 & 0xFF


def canonical(address: int, width: int) -> bool:
    """Bits 63:width-1 of a 64-bit address are all equal (Vol.1 3.3.7.1)."""
    top = address >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


def high_bits_identical(value: int, n: int) -> bool:
    """Bits 63:n of a 64-bit value are all equal (the SDM's RIP/SSP wording, one bit weaker than canonical)."""
    top = value >> n
    return top == 0 or top == (1 << (64 - n)) - 1


def cpuid_bit(ctx: Context, leaf: int, subleaf: int, reg: str, bit: int) -> bool:
    """CPUID.(EAX=leaf,ECX=subleaf):reg[bit]."""
    return bool(ctx.cpuid(leaf, subleaf)["abcd".index(reg[1])] >> bit & 1)


__all__ = ["ED", "control_value", "control_on", "control_label", "field_label", "show", "ia32e_guest",
           "unrestricted", "v86_guest", "in_smm", "intel64", "linear_width", "canonical",
           "high_bits_identical", "cpuid_bit"]
