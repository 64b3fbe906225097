"""The VMX controls as VM entry sees them, and VMCS field labels for messages.

One place holds the activation logic of Vol.3C 25.6.2 / 25.7.1 and 27.2.1.1
(SDM 325462-080US, 2023): the secondary processor-based controls count only
when primary "activate secondary controls" (bit 31) is 1, the tertiary ones
only when primary "activate tertiary controls" (bit 17) is 1, the secondary
VM-exit controls only when VM-exit bit 31 is 1, and the VM-function controls
only when secondary "enable VM functions" is 1. A field that is not activated
is not read (a VMCS need not hold it) and every control in it counts as 0.

Control and bit names are those of structs/controls.yaml, e.g.
`on(ctx, "secondary", "enable_ept")`. Reading a field the snapshot lacks
raises Missing through the Context, so the rule becomes `unknown`.
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple, Union

from ..common.numbers import hexs
from .engine import Context

#: control -> (control holding its activation bit, that bit's name)
ACTIVATED_BY: Dict[str, Tuple[str, str]] = {
    "secondary": ("primary", "activate_secondary_controls"),
    "tertiary": ("primary", "activate_tertiary_controls"),
    "secondary_exit": ("exit", "activate_secondary_controls"),
    "vm_functions": ("secondary", "enable_vm_functions"),
}


@functools.lru_cache(maxsize=None)
def control_def(name: str):  # type: ignore[no-untyped-def]
    """The ControlDef of `name` (structs/controls.yaml), cached."""
    from ..decode import defs
    return defs.control(name)


@functools.lru_cache(maxsize=None)
def bit(control: str, name: str) -> int:
    """Bit position of control `name` in field `control`."""
    return control_def(control).bit(name)


@functools.lru_cache(maxsize=None)
def encoding(field: str) -> int:
    """The VMCS encoding of a field name (structs/vmcs_fields.yaml)."""
    from ..decode import defs
    return defs.vmcs_field(field).encoding


@functools.lru_cache(maxsize=None)
def field_name(enc: int) -> str:
    """The name of a VMCS encoding, e.g. VM_ENTRY_CONTROLS."""
    from ..decode import defs
    return defs.vmcs_field(enc).name


def read(ctx: Context, field: Union[int, str]) -> int:
    """ctx.vmcs(field) with the name resolved once (cached), not on every read."""
    return ctx.vmcs(field if isinstance(field, int) else encoding(field))


def label(field: Union[int, str]) -> str:
    """`VM_ENTRY_CONTROLS (0x4012)`."""
    enc = field if isinstance(field, int) else encoding(field)
    return f"{field_name(enc)} (0x{enc:04x})"


def shown(field: Union[int, str], value: int) -> str:
    """`VM_ENTRY_CONTROLS (0x4012) = 0xd3ff`."""
    return f"{label(field)} = {hexs(value)}"


KIND = {"pin_based": "pin-based VM-execution", "primary": "primary processor-based VM-execution",
        "secondary": "secondary processor-based VM-execution", "tertiary": "tertiary processor-based VM-execution",
        "exit": "VM-exit", "secondary_exit": "secondary VM-exit", "entry": "VM-entry",
        "vm_functions": "VM-function"}
_ACRONYMS = {"ept", "vpid", "pml", "apic", "nmi", "nmis", "tpr", "tsc", "msr", "io", "pat", "efer",
             "cet", "pkrs", "rtit", "lbr", "hlat", "smm", "pt", "vm", "vmx", "uinv", "bndcfgs", "pconfig",
             "encls", "enclv", "rdtscp", "invpcid", "rdrand", "rdseed", "xsaves", "xrstors", "ipi", "pasid",
             "fred", "cr3", "cr8", "dr", "hlt", "invlpg", "mwait", "rdpmc", "rdtsc", "wbinvd", "vmcs", "ve",
             "msrlist"}
_SPELLED = {"ia32e": "IA-32e", "x2apic": "x2APIC", "nmis": "NMIs", "ve": "#VE"}


def words(name: str) -> str:
    """`enable_ept` -> `enable EPT`; `load_ia32_perf_global_ctrl` -> `load IA32_PERF_GLOBAL_CTRL`."""
    parts = name.split("_")
    out = []
    for i, w in enumerate(parts):
        if w == "ia32":  # an MSR name runs to the end
            out.append("_".join(p.upper() for p in parts[i:]))
            break
        out.append(_SPELLED.get(w) or (w.upper() if w in _ACRONYMS else w))
    return " ".join(out).replace("address space", "address-space")


def control_label(control: str, name: str) -> str:
    """`"enable EPT" (secondary processor-based VM-execution control, bit 1)`."""
    return f'"{words(name)}" ({KIND.get(control, control)} control, bit {bit(control, name)})'


@functools.lru_cache(maxsize=None)
def _chain(control: str) -> Tuple[Tuple[int, int], ...]:
    """(encoding, bit) of each activation bit above `control`, outermost first."""
    parent = ACTIVATED_BY.get(control)
    if parent is None:
        return ()
    return _chain(parent[0]) + ((control_def(parent[0]).vmcs, bit(*parent)),)


def is_active(ctx: Context, control: str) -> bool:
    """Whether VM entry uses field `control` (its activation chain is all 1)."""
    for enc, b in _chain(control):
        if not ctx.vmcs(enc) >> b & 1:
            return False
    return True


def value(ctx: Context, control: str) -> int:
    """The value VM entry uses for field `control`: 0 when not activated."""
    if not is_active(ctx, control):
        return 0
    return ctx.vmcs(control_def(control).vmcs)


def raw(ctx: Context, control: str) -> int:
    """The field as stored, whether or not it is activated."""
    return ctx.vmcs(control_def(control).vmcs)


def on(ctx: Context, control: str, name: str) -> bool:
    """Whether control `name` of field `control` is in effect (1 and activated)."""
    return bool(value(ctx, control) >> bit(control, name) & 1)


def qualified(spec: str) -> Tuple[str, str]:
    """Split `secondary.enable_ept` into ("secondary", "enable_ept")."""
    control, _, name = spec.partition(".")
    if not name:
        raise ValueError(f"control spec {spec!r} must look like secondary.enable_ept")
    return control, name


def linear_width(ctx: Context) -> int:
    """The processor's linear-address width N, CPUID.80000008H:EAX[15:8] (48 or 57), or
    what the state proves of it (Context.linear_width)."""
    return ctx.linear_width()


def is_canonical(address: int, width: int) -> bool:
    """Bits 63:width-1 of `address` all equal (Vol.3A 3.3.7.1)."""
    top = address >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


def in_smm(ctx: Context) -> bool:
    """state.smm, the processor's SMM status."""
    return bool(ctx.state("smm"))


__all__ = ["ACTIVATED_BY", "bit", "control_def", "control_label", "encoding", "field_name", "in_smm",
           "is_active", "is_canonical", "label", "read", "linear_width", "on", "qualified", "raw", "shown", "value", "words"]
