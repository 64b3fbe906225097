"""What the guest will be after VM entry: its mode, and the processor facts guest checks need.

Shared by the guest-state rule modules (vmxdbg/rules/guest/,
msrload.py) so that each rule states only its own condition. The activation
logic of the controls is vmcsctl's (one place); this module adds the guest's
mode as SDM Vol.3C 27.3.1 defines it (SDM 325462-080US, 2023): "IA-32e mode
guest", the effective "unrestricted guest", "the guest will be virtual-8086".
Everything is read through the Context: a missing input is a Missing (an
`unknown` finding naming it), never a default.
"""
from __future__ import annotations

from typing import Union

from .bits import reg_bit
from .engine import Context
from .vmcsctl import label, on, shown

RFLAGS_VM = reg_bit("RFLAGS", "vm")


def show(ctx: Context, field_: Union[int, str]) -> str:
    """`GUEST_CR0 (0x6800) = 0x80000031`: a field and its value (reads it)."""
    return shown(field_, ctx.vmcs(field_))


def field_label(field_: Union[int, str]) -> str:
    """`GUEST_CR0 (0x6800)`."""
    return label(field_)


def ia32e_guest(ctx: Context) -> bool:
    """The "IA-32e mode guest" VM-entry control (bit 9)."""
    return on(ctx, "entry", "ia32e_mode_guest")


def unrestricted(ctx: Context) -> bool:
    """The effective "unrestricted guest" control (0 unless the secondary controls are activated)."""
    return on(ctx, "secondary", "unrestricted_guest")


def v86_guest(ctx: Context) -> bool:
    """"The guest will be virtual-8086": RFLAGS.VM (bit 17) in the guest RFLAGS field."""
    return bool(ctx.vmcs("GUEST_RFLAGS") & RFLAGS_VM)


def intel64(ctx: Context) -> bool:
    """Whether the processor supports Intel 64 architecture.

    CPUID.80000001H:EDX.LM[29] when read; else what the state proves of it (IA32_EFER.LMA
    or LME = 1 proves it, state/evidence.py); else the CPUID leaf is missing."""
    return bool(ctx.cpuid_bit(0x80000001, 0, 3, 29))


def high_bits_identical(value: int, n: int) -> bool:
    """Bits 63:n of a 64-bit value are all equal: the SDM's wording for guest RIP and SSP,
    one bit weaker than canonical (bit n-1 is not compared)."""
    top = value >> n
    return top == 0 or top == (1 << (64 - n)) - 1


__all__ = ["show", "field_label", "ia32e_guest", "unrestricted", "v86_guest", "intel64", "high_bits_identical"]
