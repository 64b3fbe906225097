"""The names of processor state, defined once.

The snapshot format, recordings, the backends' `vmx_state()`, collection,
`--assume` and rendering all use these names; the file formats are
specified in docs/formats.md.
"""
from __future__ import annotations

#: segment registers, in the order the SDM lists them, and their parts (VMCS access-rights format)
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")
SEGMENT_PARTS = ("selector", "base", "limit", "attributes")
#: descriptor-table registers and their parts
TABLES = ("gdtr", "idtr")
TABLE_PARTS = ("base", "limit")

#: processor state a debugger rarely shows, as booleans ("hypervisor": runs under another VMM)
BOOL_STATES = ("a20m", "smm", "smx", "blocking_by_mov_ss", "blocking_by_sti", "hypervisor")
#: every key of a processor's "state" (what `--assume` may state)
STATES = ("vmx", "cpl") + BOOL_STATES
#: values of state "vmx"
VMX_MODES = ("off", "root", "non-root")

#: the VMX pointers and the current VMCS's launch state, beside "state"
VMX_POINTERS = ("vmxon_pointer", "vmcs_pointer")
LAUNCH_STATE = "vmcs_launch_state"
LAUNCH_STATES = ("clear", "launched")
#: the VMCS pointer's value when no VMCS is current
NO_VMCS = 0xFFFFFFFFFFFFFFFF
