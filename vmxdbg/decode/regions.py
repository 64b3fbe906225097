"""A VMXON or VMCS region in physical memory: read it, say what it is, decode it.

The first dword of both regions holds the VMCS revision identifier in bits
30:0. In a VMCS, bit 31 is the shadow-VMCS indicator; in a VMXON region it
must be 0 (Vol.3C 25.2 and 25.11.5, SDM 325462-080US, 2023). What follows the
header is implementation-specific and decoded with the layout of that revision
id (vmxdbg.decode.layouts). A region passed as the wrong kind (a VMXON region
given as a VMCS, a VMCS given as the VMXON region, a shadow VMCS given where
an ordinary one belongs) is recognised from the processors' pointers in the
snapshot and from the header, and said in `notes`.

Memory is read through a Reader: (address, size) -> bytes, or None when those
bytes are not known. Unknown bytes leave fields unknown, never zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from .header import basic_revision, first_dword, revision_id, shadow_bit
from .layouts import Layout, layout_for_revision
from ..common.statekeys import NO_VMCS

if TYPE_CHECKING:   # a Snapshot is only read here (its memory and pointers)
    from ..state.snapshot import Snapshot

Reader = Callable[[int, int], Optional[bytes]]
ED = "(SDM 325462-080US, 2023)"
LINK_POINTER = 0x2800
IA32_VMX_BASIC = 0x480
PROCBASED_CTLS2 = 0x48B
VMCS_SHADOWING_BIT = 14


def snapshot_reader(snapshot: Snapshot) -> Reader:
    """Reads the snapshot's known physical memory."""
    return snapshot.memory.read


@dataclass
class Reference:
    """A processor that uses this address, and as what."""

    cpu: int
    role: str       # "vmxon", "current-vmcs", "vmclear", "vmptrld", "link"

    def describe(self) -> str:
        return {"vmxon": "its VMXON region (VMXON pointer)",
                "current-vmcs": "its current VMCS",
                "vmclear": "the operand of its VMCLEAR",
                "vmptrld": "the operand of its VMPTRLD",
                "link": "the VMCS link pointer of its current VMCS"}[self.role]


@dataclass
class Note:
    """One thing said about the region: a `problem` or `info`, with its SDM section."""

    level: str
    text: str
    sdm: str = ""


@dataclass
class Region:
    """What is known of the region at `address`, read as the kind `asked`."""

    address: int
    asked: str                          # "vmcs" or "vmxon"
    kind: str = "unknown"               # "vmcs", "shadow-vmcs", "vmxon", "unknown"
    dword0: Optional[int] = None
    abort: Optional[int] = None
    layout: Optional[Layout] = None
    fields: Dict[int, int] = field(default_factory=dict)
    missing: List[int] = field(default_factory=list)   # layout fields whose bytes are unknown
    extras: Dict[str, int] = field(default_factory=dict)
    references: List[Reference] = field(default_factory=list)
    expected_revision: Optional[int] = None            # IA32_VMX_BASIC[30:0], when known
    notes: List[Note] = field(default_factory=list)

    @property
    def revision_id(self) -> Optional[int]:
        return None if self.dword0 is None else revision_id(self.dword0)

    @property
    def bit31(self) -> Optional[bool]:
        return None if self.dword0 is None else shadow_bit(self.dword0)

    def launch_state(self) -> Optional[str]:
        """"clear"/"launched" from the layout's launch_state extra, when the layout has one."""
        if self.layout is None or "launch_state" not in self.extras:
            return None
        extra = next(e for e in self.layout.extras if e.name == "launch_state")
        meaning = extra.values.get(self.extras["launch_state"])
        return meaning if meaning in ("clear", "launched") else None


def references(snapshot: Optional[Snapshot], address: int) -> List[Reference]:
    """Every processor pointer in the snapshot that names `address`."""
    out: List[Reference] = []
    if snapshot is None:
        return out
    for cpu, p in sorted(snapshot.processors.items()):
        if p.vmxon_pointer == address:
            out.append(Reference(cpu, "vmxon"))
        if p.vmcs_pointer == address:
            out.append(Reference(cpu, "current-vmcs"))
        for insn in ("vmclear", "vmptrld"):
            if p.operands.get(insn) == address:
                out.append(Reference(cpu, insn))
        if p.vmcs.get(LINK_POINTER) == address and address != NO_VMCS:
            out.append(Reference(cpu, "link"))
    return out


def _expected_revision(snapshot: Optional[Snapshot], refs: List[Reference]) -> Optional[int]:
    if snapshot is None:
        return None
    cpus = [r.cpu for r in refs] + sorted(snapshot.processors)
    for cpu in cpus:
        basic = snapshot.processors[cpu].msr.get(IA32_VMX_BASIC)
        if basic is not None:
            return basic_revision(basic)
    return None


def _shadowing_allowed(snapshot: Optional[Snapshot]) -> Optional[bool]:
    if snapshot is None:
        return None
    for p in snapshot.processors.values():
        ctls2 = p.msr.get(PROCBASED_CTLS2)
        if ctls2 is not None:
            return bool(ctls2 >> (32 + VMCS_SHADOWING_BIT) & 1)
    return None


def read_fields(layout: Layout, read: Reader, address: int) -> Dict[int, int]:
    """{encoding: value} of the layout's fields whose bytes `read` knows."""
    whole = read(address, layout.span)
    if whole is not None:
        return layout.parse(whole)
    out = {}
    for s in layout.slots:
        raw = read(address + s.offset, s.size)
        if raw is not None:
            out[s.encoding] = s.decode(int.from_bytes(raw, "little"))
    return out


def _extras(layout: Layout, read: Reader, address: int) -> Dict[str, int]:
    out = {}
    for e in layout.extras:
        raw = read(address + e.offset, e.size)
        if raw is not None:
            out[e.name] = int.from_bytes(raw, "little")
    return out


def inspect(address: int, read: Reader, *, asked: str = "vmcs", snapshot: Optional[Snapshot] = None,
            layout: Optional[Layout] = None) -> Region:
    """Read the region at `address` as a VMCS (`asked`="vmcs") or VMXON region and say what it is.

    `layout` overrides the choice by revision id. Never raises for memory that
    is not known: the header and fields stay unknown and a note says why.
    """
    r = Region(address=address, asked=asked)
    r.references = references(snapshot, address)
    r.expected_revision = _expected_revision(snapshot, r.references)
    if address & 0xFFF:
        r.notes.append(Note("problem", f"0x{address:x} is not 4-KByte aligned: VMXON, VMCLEAR and VMPTRLD "
                                       "all fail with this operand", f"Vol.3C 31.3 {ED}"))
    head = read(address, 8) or read(address, 4)
    if head is None:
        r.notes.append(Note("info", f"the memory at 0x{address:x} is not known (not in the snapshot, or the "
                                    "backend cannot read it): nothing can be decoded"))
        return r
    r.dword0 = first_dword(head)
    if len(head) >= 8:
        r.abort = int.from_bytes(head[4:8], "little")
    rev = r.revision_id
    r.layout = layout if layout is not None else layout_for_revision(rev)  # type: ignore[arg-type]
    if r.layout is not None:
        r.fields = read_fields(r.layout, read, address)
        r.missing = [s.encoding for s in r.layout.slots if s.encoding not in r.fields]
        r.extras = _extras(r.layout, read, address)
    _classify(r, snapshot)
    return r


def _vmcs_like(r: Region) -> Optional[str]:
    """Why the decoded content looks like a VMCS someone wrote, or None."""
    if not r.fields:
        return None
    if r.fields.get(LINK_POINTER) == NO_VMCS:
        return "its VMCS link pointer field is 0xffffffffffffffff"
    nonzero = [e for e, v in r.fields.items() if v]
    if len(nonzero) >= 8:
        return f"{len(nonzero)} of its fields hold non-zero values"
    return None


def _classify(r: Region, snapshot: Optional[Snapshot]) -> None:
    rev, bit31 = r.revision_id, r.bit31
    vmxon_users = [ref.cpu for ref in r.references if ref.role == "vmxon"]
    vmcs_users = [ref for ref in r.references if ref.role != "vmxon"]
    if r.expected_revision is not None and rev != r.expected_revision:
        r.notes.append(Note("problem", f"revision id 0x{rev:x} differs from IA32_VMX_BASIC[30:0] = "
                                       f"0x{r.expected_revision:x}: VMXON fails (VMfailInvalid), VMPTRLD fails "
                                       "(VMfailValid 11)", f"Vol.3C 31.3 VMXON, VMPTRLD {ED}"))
    if r.asked == "vmcs":
        if vmxon_users:
            r.kind = "vmxon"
            who = ", ".join(str(c) for c in vmxon_users)
            r.notes.append(Note("problem", f"this is the VMXON region of cpu {who}, not a VMCS: VMCLEAR of it fails "
                                           "(VMfailValid 3), VMPTRLD of it fails (VMfailValid 10), and software "
                                           "must not touch it between VMXON and VMXOFF",
                                f"Vol.3C 25.11.5, 31.4 {ED}"))
        elif bit31:
            r.kind = "shadow-vmcs"
            allowed = _shadowing_allowed(snapshot)
            cap = {True: "this processor supports VMCS shadowing", False: "this processor does not support VMCS "
                   "shadowing, so VMPTRLD of it fails (VMfailValid 11)", None: "VMPTRLD of it fails (VMfailValid 11) "
                   "unless the processor supports VMCS shadowing"}[allowed]
            r.notes.append(Note("problem" if any(x.role == "current-vmcs" for x in vmcs_users) else "info",
                                "shadow-VMCS indicator (bit 31) is 1: a shadow VMCS, for VMREAD/VMWRITE in VMX "
                                f"non-root operation through a VMCS link pointer; VMLAUNCH/VMRESUME with it as the "
                                f"current VMCS fail (VMfailInvalid); {cap}",
                                f"Vol.3C 25.10, 27.1, 31.3 VMPTRLD {ED}"))
        else:
            r.kind = "vmcs"
            if r.layout is not None and r.fields and not any(r.fields.values()) and not vmcs_users:
                r.notes.append(Note("info", "every field reads 0: a VMCS never written, or a VMXON region "
                                            "(software leaves those zeroed)"))
        if any(x.role == "current-vmcs" for x in vmcs_users):
            r.notes.append(Note("info", "this is the current VMCS of cpu "
                                + ", ".join(str(x.cpu) for x in vmcs_users if x.role == "current-vmcs")
                                + ": a processor may keep VMCS data in its own storage until VMCLEAR, so memory "
                                  "can be stale (Bochs writes through; KVM writes vmcs12 back at VMCLEAR)",
                                f"Vol.3C 25.11.1 {ED}"))
    else:  # asked: vmxon
        r.kind = "vmxon"
        if vmcs_users:
            r.kind = "shadow-vmcs" if bit31 else "vmcs"
            who = "; ".join(f"cpu {x.cpu}: {x.describe()}" for x in vmcs_users)
            r.notes.append(Note("problem", f"this region is used as a VMCS ({who}), not as a VMXON region: "
                                           "the processor would use it for both", f"Vol.3C 25.11.5 {ED}"))
        if bit31:
            r.notes.append(Note("problem", "bit 31 of the first dword is 1: in a VMXON region it must be 0, "
                                           "VMXON fails (VMfailInvalid)", f"Vol.3C 25.11.5, 31.3 VMXON {ED}"))
        why = _vmcs_like(r)
        if why and not vmcs_users:
            r.kind = "vmcs"
            r.notes.append(Note("problem", f"this looks like a VMCS, not a VMXON region: {why}",
                                f"Vol.3C 25.11.5 {ED}"))
