"""The first dword of a VMXON region or VMCS, and IA32_VMX_BASIC's revision id, read by name.

Bits 30:0 hold the VMCS revision identifier; bit 31 is the shadow-VMCS
indicator in a VMCS and must be 0 in a VMXON region (structs/registers.yaml
VMCS_HEADER and VMXON_HEADER; Vol.3C 25.2 and 25.11.5, SDM 325462-080US).
Every reader of a region header goes through here.
"""
from __future__ import annotations

from . import defs


def first_dword(data: bytes) -> int:
    """The header dword at the start of `data` (little-endian; at least 4 bytes)."""
    return int.from_bytes(data[:4], "little")


def revision_id(dword: int) -> int:
    """Bits 30:0 of a region's first dword."""
    return defs.register("VMCS_HEADER").get(dword, "revision_id")


def shadow_bit(dword: int) -> bool:
    """Bit 31 of a region's first dword (the shadow-VMCS indicator; must be 0 in a VMXON region)."""
    return bool(defs.register("VMCS_HEADER").get(dword, "shadow"))


def basic_revision(basic: int) -> int:
    """IA32_VMX_BASIC[30:0]: the revision id regions must carry."""
    return defs.register("IA32_VMX_BASIC").get(basic, "revision_id")
