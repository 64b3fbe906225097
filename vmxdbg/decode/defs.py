"""The hardware definitions, looked up by name, MSR index or VMCS encoding.

    from vmxdbg.decode import defs
    defs.register("IA32_VMX_BASIC").decode(0x00da040000000004)
    defs.msr(0x480).get(value, "revision_id")
    defs.control("pin_based").bit("nmi_exiting")          # -> 3
    defs.vmcs_field("GUEST_CR0").encoding                  # -> 0x6800

structs/ is read and validated once, on first use, and cached. Lookups never
raise KeyError: an unknown name, index or encoding is an InputError naming it.
A malformed definition file is a DefinitionError naming the file and key.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Union

from ..common.errors import InputError
from ..common.numbers import parse_int
from .loader import Definitions, load_definitions
from .model import ControlDef, RegionDef, RegisterDef, VmcsField


@functools.lru_cache(maxsize=1)
def definitions() -> Definitions:
    """Everything in structs/, loaded once."""
    return load_definitions()


def _norm(name: str) -> str:
    return name.strip().upper().replace("-", "_")


def register(name: str) -> RegisterDef:
    """The register or MSR called `name` (case-insensitive: "cr0", "IA32_VMX_BASIC")."""
    regs = definitions().registers
    found = regs.get(name) or next((r for n, r in regs.items() if n == _norm(name)), None)
    if found is None:
        raise InputError(f"unknown register {name!r} (try `vmxdbg decode --list`)")
    return found


def registers() -> List[RegisterDef]:
    """Every register definition, in file order."""
    return list(definitions().registers.values())


def msr_or_none(index: int) -> Optional[RegisterDef]:
    """The definition of MSR `index`, or None when structs/ does not describe it."""
    return definitions().by_msr.get(index)


def msr(index: int) -> RegisterDef:
    """The definition of MSR `index`; InputError "unknown MSR 0x..." when there is none."""
    found = msr_or_none(index)
    if found is None:
        raise InputError(f"unknown MSR {index:#x}")
    return found


def controls() -> Dict[str, ControlDef]:
    """Every VMX control field by name (pin_based, primary, secondary, tertiary, exit, ...)."""
    return dict(definitions().controls)


def control(name: str) -> ControlDef:
    """The control field `name` ("pin_based", "pin-based", case-insensitive)."""
    ctl = definitions().controls
    key = name.strip().lower().replace("-", "_")
    if key not in ctl:
        raise InputError(f"unknown control field {name!r} (known: {', '.join(ctl)})")
    return ctl[key]


def control_for_vmcs(encoding: int) -> Optional[ControlDef]:
    """The control field stored at VMCS `encoding`, if that field is a control."""
    return next((c for c in definitions().controls.values() if c.vmcs == encoding), None)


def vmcs_field(key: Union[int, str]) -> VmcsField:
    """A VMCS field by encoding (0x6800, "0x6800", "6800") or name/alias, case-insensitive.

    An odd encoding (or NAME_HIGH) is the HIGH half of a 64-bit field.
    """
    d = definitions()
    if isinstance(key, str):
        by_name = d.vmcs_names.get(_norm(key))
        if by_name is not None:
            return by_name
        try:
            enc = parse_int(key, what="VMCS field")
        except InputError:
            raise InputError(f"unknown VMCS field {key!r} (give an encoding like 0x6800 or a name like GUEST_CR0)") from None
    else:
        enc = parse_int(key, what="VMCS field")
    full = d.vmcs_fields.get(enc & ~1)
    if full is not None and not enc & 1:
        return full
    if full is not None and full.width == "64":
        return d.vmcs_names[f"{full.name}_HIGH"]
    raise InputError(f"unknown VMCS field encoding {enc:#06x}")


def vmcs_fields() -> List[VmcsField]:
    """Every VMCS field (full encodings), in encoding order."""
    return [f for _, f in sorted(definitions().vmcs_fields.items())]


def region(name: str) -> RegionDef:
    """The region header layout `name` ("VMXON_REGION", "vmcs_region", "vmcs")."""
    regs = definitions().regions
    key = _norm(name)
    found = regs.get(key) or regs.get(f"{key}_REGION")
    if found is None:
        raise InputError(f"unknown region {name!r} (known: {', '.join(regs)})")
    return found


def regions() -> List[RegionDef]:
    return list(definitions().regions.values())
