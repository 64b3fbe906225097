"""What the running state proves: inputs a debugger cannot show, derived from inputs it does show.

A kernel debugger cannot execute CPUID and cannot see whether a processor is in
VMX operation. The state it does show often settles the question anyway: a
processor whose IA32_EFER.LMA is 1 supports Intel 64, one whose IA32_VMX_BASIC
could be read supports VMX, one whose CR4.VMXE is 0 is outside VMX operation.
This module makes those derivations, each as an `Inference` that states what it
concludes, the evidence it rests on (the input keys and their values) and the
SDM text that makes it hold (SDM 325462-080US, 2023).

Rules never read the derived values from here directly: the rule Context
(vmxdbg/rules/engine.py) asks for a CPUID flag, the VMX mode, a state flag,
MAXPHYADDR or a VMCS field and falls back to an inference only when the input
was neither read nor given with `--assume`. A value that was read or assumed
always wins; where it disagrees with an inference the disagreement is a
`Contradiction`, reported on its own line (never settled silently).

The tables (CPUID flags by name, the CR4 and IA32_EFER bits that need a flag,
the VMCS fields that exist only with a control) are data: structs/evidence.yaml.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..common.numbers import hexs
from ..common.statekeys import NO_VMCS
from .snapshot import Processor

ED = "(SDM 325462-080US, 2023)"
REGS = ("eax", "ebx", "ecx", "edx")
FILE = "evidence.yaml"
MAXPHYADDR_FLOOR = 32      # Vol.3A 4.1.4: 36 with PAE, 32 without, where CPUID 80000008H is absent
MAXPHYADDR_CEILING = 52    # Vol.3A 4.1.4: "MAXPHYADDR is at most 52"
VMX_MSRS = range(0x480, 0x494)
SYNTHETIC_MSRS = range(0x40000000, 0x40000100)
SUBLEAF_COUNTED = (0x7, 0x14)   # leaves whose sub-leaf 0 EAX is the highest valid sub-leaf (Vol.2A CPUID)
INTEL = "GenuineIntel"
SVM_VENDORS = ("AuthenticAMD", "HygonGenuine")
_FLAG = re.compile(r"^(0x[0-9a-fA-F]+)(?:\.(\d+))?\.(eax|ebx|ecx|edx)\[(\d+)\]$")


# ------------------------------------------------------------------ the tables

@dataclass(frozen=True)
class Flag:
    """One CPUID feature flag: CPUID.(EAX=leaf,ECX=sub):reg[bit]."""

    name: str
    leaf: int
    sub: int
    reg: int
    bit: int

    @property
    def leaf_key(self) -> str:
        """The input key of its leaf, as the rule Context names it (`cpuid:0x7`, `cpuid:0x7.1`)."""
        return f"cpuid:{hexs(self.leaf)}" + (f".{self.sub:x}" if self.sub else "")

    @property
    def slot(self) -> str:
        """A key for the flag alone: `cpuid:0x80000001.edx[29]`."""
        return f"{self.leaf_key}.{REGS[self.reg]}[{self.bit}]"

    def text(self, value: int) -> str:
        """`CPUID.80000001H:EDX.LM[29] = 1`, `CPUID.(EAX=07H,ECX=0):ECX.CET_SS[7] = 0`."""
        leaf = f"{self.leaf:02X}H"
        where = f"CPUID.(EAX={leaf},ECX={self.sub})" if self.leaf in SUBLEAF_COUNTED else f"CPUID.{leaf}"
        return f"{where}:{REGS[self.reg].upper()}.{self.name}[{self.bit}] = {value}"


@dataclass(frozen=True)
class Tables:
    flags: Dict[str, Flag]
    by_bit: Dict[Tuple[int, int, int, int], Flag]
    cr4: Dict[int, Tuple[str, Tuple[str, ...]]]
    efer: Dict[int, Tuple[str, str]]
    fields: Dict[int, Tuple[str, Tuple[Tuple[str, str], ...]]]


@functools.lru_cache(maxsize=None)
def tables() -> Tables:
    """structs/evidence.yaml, validated; DefinitionError names the key of any problem."""
    from ..decode import defs
    from ..decode.loader import _File, default_directory
    f = _File(default_directory(), FILE, f"structs/{FILE}")
    raw = f.load("features")
    full = {"features": raw}
    for top in ("cr4", "efer", "fields"):
        full[top] = f.load(top)
    flags: Dict[str, Flag] = {}
    for name, body in f.mapping(raw, "features", tuple(raw), ()).items():
        body = f.mapping(body, f"features.{name}", ("cpuid",), ("cpuid",))
        m = _FLAG.match(f.text(body["cpuid"], f"features.{name}.cpuid"))
        if not m or int(m.group(4)) > 31:
            raise f.fail(f"features.{name}.cpuid", "expected LEAF[.SUBLEAF].REG[BIT], e.g. 0x7.0.ecx[7]")
        flags[name] = Flag(name, int(m.group(1), 16), int(m.group(2) or 0), REGS.index(m.group(3)), int(m.group(4)))

    def known(name: Any, key: str) -> str:
        if name not in flags:
            raise f.fail(key, f"{name!r} is not a feature named under features")
        return str(name)

    cr4: Dict[int, Tuple[str, Tuple[str, ...]]] = {}
    for b, body in f.mapping(full["cr4"], "cr4", tuple(full["cr4"]), ()).items():
        k = f"cr4.{b}"
        body = f.mapping(body, k, ("name", "features"), ("name", "features"))
        if not isinstance(body["features"], list) or not body["features"]:
            raise f.fail(f"{k}.features", "expected a non-empty list of feature names")
        cr4[f.integer(b, k, 0, 63)] = (f.text(body["name"], f"{k}.name"),
                                       tuple(known(n, f"{k}.features") for n in body["features"]))
    efer: Dict[int, Tuple[str, str]] = {}
    for b, body in f.mapping(full["efer"], "efer", tuple(full["efer"]), ()).items():
        k = f"efer.{b}"
        body = f.mapping(body, k, ("name", "feature"), ("name", "feature"))
        efer[f.integer(b, k, 0, 63)] = (f.text(body["name"], f"{k}.name"), known(body["feature"], f"{k}.feature"))
    fields: Dict[int, Tuple[str, Tuple[Tuple[str, str], ...]]] = {}
    for name, controls in f.mapping(full["fields"], "fields", tuple(full["fields"]), ()).items():
        k = f"fields.{name}"
        try:
            enc = defs.vmcs_field(str(name)).encoding
        except Exception:
            raise f.fail(k, f"{name!r} is not a VMCS field of structs/vmcs_fields.yaml") from None
        if not isinstance(controls, list) or not controls:
            raise f.fail(k, "expected a non-empty list of controls (control.bit_name)")
        pairs = []
        for c in controls:
            ctl, _, bit_name = str(c).partition(".")
            try:
                defs.control(ctl).bit(bit_name)
            except Exception:
                raise f.fail(k, f"{c!r} is not a control of structs/controls.yaml") from None
            pairs.append((ctl, bit_name))
        fields[enc] = (str(name), tuple(pairs))
    by_bit = {(fl.leaf, fl.sub, fl.reg, fl.bit): fl for fl in flags.values()}
    return Tables(flags, by_bit, cr4, efer, fields)


def flag_at(leaf: int, sub: int, reg: int, bit: int) -> Flag:
    """The flag at a CPUID position (named `bit N` when the table does not name it)."""
    got = tables().by_bit.get((leaf, sub, reg, bit))
    return got if got is not None else Flag(f"bit{bit}", leaf, sub, reg, bit)


def flag(name: str) -> Flag:
    return tables().flags[name]


# ------------------------------------------------------------ what is derived

@dataclass(frozen=True)
class Inference:
    """A derived input: what it concludes, the evidence it rests on, and why it holds."""

    slot: str                  # what is concluded, as a key: cpuid:0x80000001.edx[29], state:vmx, maxphyaddr
    value: Any
    conclusion: str            # "CPUID.80000001H:EDX.LM[29] = 1"
    evidence: str              # "IA32_EFER.LMA = 1 (IA32_EFER = 0xd01)"
    inputs: Tuple[str, ...]    # the input keys the evidence was read from
    sdm: str
    flag: Optional[Flag] = field(default=None, compare=False)   # the CPUID flag concluded, if one

    def text(self) -> str:
        return f"{self.conclusion}, inferred from {self.evidence}"

    def to_json(self) -> dict:
        value = self.value if isinstance(self.value, (bool, int, str)) or self.value is None else str(self.value)
        return {"conclusion": self.conclusion, "key": self.slot, "value": value, "evidence": self.evidence,
                "inputs": list(self.inputs), "sdm": self.sdm}


def _fi(fl: Flag, value: int, evidence: str, inputs: Tuple[str, ...], sdm: str) -> Inference:
    """An inference that CPUID flag `fl` has `value`."""
    return Inference(fl.slot, value, fl.text(value), evidence, inputs, sdm, fl)


@dataclass(frozen=True)
class Contradiction:
    """A value that was read or assumed, and evidence that says otherwise."""

    given: str                 # "CPUID.80000001H:EDX.NX[20] = 0 (cpuid:0x80000001, read)"
    inference: Inference

    def text(self) -> str:
        i = self.inference
        return (f"{self.given} contradicts {i.evidence}, which proves {i.conclusion} ({i.sdm}); "
                "vmxdbg uses the value that was read or assumed")

    def to_json(self) -> dict:
        return {"given": self.given, "inference": self.inference.to_json(), "message": self.text()}


def _source(p: Processor, key: str) -> str:
    """How an input was obtained, for a contradiction line: its provenance, else `read`."""
    prov = p.provenance.get(key)
    return f"{key}, {prov}" if prov else f"{key}, read"


def _vendor(regs: Tuple[int, int, int, int]) -> str:
    """The vendor string of CPUID.0: EBX, EDX, ECX as little-endian ASCII."""
    raw = b"".join((v & 0xFFFFFFFF).to_bytes(4, "little") for v in (regs[1], regs[3], regs[2]))
    return raw.decode("ascii", "replace")


@dataclass
class Evidence:
    """Everything derived for one processor, computed once from its Processor."""

    p: Processor
    flags: Dict[str, Inference] = field(default_factory=dict)      # Flag.slot -> inference
    states: Dict[str, Inference] = field(default_factory=dict)     # vmx, a20m, smx, hypervisor
    maxphyaddr_min: Optional[Inference] = None
    contradictions: List[Contradiction] = field(default_factory=list)
    _absent: Dict[int, Optional[Inference]] = field(default_factory=dict)

    # --------------------------------------------------------------- lookups
    def flag(self, leaf: int, sub: int, reg: int, bit: int) -> Optional[Inference]:
        """An inference about a CPUID flag whose leaf was not read, or None."""
        fl = flag_at(leaf, sub, reg, bit)
        beyond = self._beyond_max_subleaf(fl)   # rests on a leaf that was read: first
        return beyond if beyond is not None else self.flags.get(fl.slot)

    def maxphyaddr_floor(self) -> int:
        return self.maxphyaddr_min.value if self.maxphyaddr_min is not None else MAXPHYADDR_FLOOR

    def absent_field(self, encoding: int) -> Optional[Inference]:
        """An inference that VMCS field `encoding` does not exist on this processor: every
        control it belongs to may only be 0 (Vol.3D Appendix B). None when it may exist."""
        if encoding not in self._absent:
            self._absent[encoding] = self._field_absent(encoding)
        return self._absent[encoding]

    # ----------------------------------------------------------- derivations
    def derive(self) -> "Evidence":
        p = self.p
        self._from_vmx_msrs()
        self._from_efer()
        self._from_cr4()
        self._from_vendor()
        self._from_cr4_fixed1()
        self._hypervisor()
        self._vmx_mode()
        self._a20m_smx()
        self._maxphyaddr()
        self._contradict_reads()
        del p
        return self

    def _add_flag(self, inf: Inference, strong: bool = True) -> None:
        old = self.flags.get(inf.slot)
        if old is None:
            self.flags[inf.slot] = inf
        elif old.value != inf.value and strong:
            self.contradictions.append(Contradiction(f"{old.conclusion} (inferred from {old.evidence})", inf))

    def _from_vmx_msrs(self) -> None:
        read = [i for i in sorted(self.p.msr) if i in VMX_MSRS]
        if not read:
            return
        from ..decode import defs
        r = defs.msr_or_none(read[0])
        name = f"{r.name} (MSR {hexs(read[0])})" if r else f"MSR {hexs(read[0])}"
        fl = flag("VMX")
        self._add_flag(_fi(fl, 1, f"{name} having been read",
                                 (f"msr:{hexs(read[0])}",),
                                 f"Vol.3D Appendix A {ED}: the VMX capability MSRs do not exist on processors "
                                 "without VMX; RDMSR of one raises #GP(0) there"))

    def _efer(self) -> Optional[Tuple[int, str]]:
        if "efer" in self.p.registers:
            return self.p.registers["efer"], "reg:efer"
        if 0xC0000080 in self.p.msr:
            return self.p.msr[0xC0000080], "msr:0xc0000080"
        return None

    def _from_efer(self) -> None:
        got = self._efer()
        if got is None:
            return
        efer, key = got
        # LMA first: IA-32e mode being active is the plainest proof of Intel 64
        for b, (name, feature) in sorted(tables().efer.items(), key=lambda kv: (kv[1][0] != "LMA", kv[0])):
            if efer >> b & 1:
                fl = flag(feature)
                self._add_flag(_fi(fl, 1, f"IA32_EFER.{name} = 1 (IA32_EFER = {hexs(efer)})",
                                         (key,), f"Vol.4 Table 2-2 IA32_EFER; Vol.3A 2.2.1 {ED}: the bit is reserved, "
                                         f"and cannot be 1, on a processor without {feature}"))

    def _from_cr4(self) -> None:
        cr4 = self.p.registers.get("cr4")
        if cr4 is None:
            return
        for b, (name, features) in sorted(tables().cr4.items()):
            if cr4 >> b & 1 and len(features) == 1:
                fl = flag(features[0])
                self._add_flag(_fi(fl, 1, f"CR4.{name} = 1 (CR4 = {hexs(cr4)})", ("reg:cr4",),
                                         f"Vol.3A 2.5 Control Registers {ED}: a CR4 bit of a feature the processor "
                                         "lacks is reserved; MOV to CR4 setting it raises #GP(0)"))

    def _from_cr4_fixed1(self) -> None:
        fixed1 = self.p.msr.get(0x489)
        if fixed1 is None:
            return
        for b, (name, features) in sorted(tables().cr4.items()):
            if fixed1 >> b & 1 or name == "VMXE":
                continue
            for feature in features:
                fl = flag(feature)
                self._add_flag(_fi(fl, 0,
                                         f"IA32_VMX_CR4_FIXED1 = {hexs(fixed1)} (CR4.{name}, bit {b}, may not be 1)",
                                         ("msr:0x489",),
                                         f"Vol.3D A.8; Vol.3C 24.8 {ED}: that CR4 bit is fixed to 0 in VMX operation, "
                                         "so the feature cannot be used there"), strong=False)

    def _from_vendor(self) -> None:
        leaf0 = self.p.cpuid.get((0, 0))
        if leaf0 is not None:
            vendor, source, keys = _vendor(leaf0), "the CPUID.0 vendor string", ("cpuid:0x0",)
        elif isinstance(self.p.state.get("vendor"), str):
            vendor, source, keys = str(self.p.state["vendor"]), "the vendor the debugger printed", ("state:vendor",)
        else:
            return
        if vendor not in SVM_VENDORS:
            return  # GenuineIntel, and VIA/Zhaoxin (CentaurHauls, "  Shanghai  ") implement VMX
        fl = flag("VMX")
        self._add_flag(_fi(fl, 0, f"{source} {vendor!r}", keys,
                                 f"Vol.3C 24.6 Discovering Support for VMX {ED}; AMD64 APM Vol.2 15.4: "
                                 "AMD-architecture processors implement SVM, not VMX"))

    def _hypervisor(self) -> None:
        p = self.p
        leaf1 = p.cpuid.get((1, 0))
        inf = None
        if leaf1 is not None and leaf1[2] >> 31 & 1:
            inf = Inference("state:hypervisor", True, "this processor runs under a hypervisor",
                            f"CPUID.01H:ECX[31] = 1 (ECX = {hexs(leaf1[2])})", ("cpuid:0x1",),
                            f"Vol.2A CPUID Table 3-10 (ECX bit 31 always returns 0 on the processor); Vol.3C 26.1.2 "
                            f"{ED} (CPUID always causes a VM exit in VMX non-root operation, so a 1 comes from a "
                            "hypervisor)")
        synthetic = [i for i in sorted(p.msr) if i in SYNTHETIC_MSRS]
        if inf is None and synthetic:
            inf = Inference("state:hypervisor", True, "this processor runs under a hypervisor",
                            f"MSR {hexs(synthetic[0])} having been read (= {hexs(p.msr[synthetic[0]])})",
                            (f"msr:{hexs(synthetic[0])}",),
                            f"Vol.4 Table 2-2 {ED}: no processor implements an MSR in 40000000H-400000FFH, so only a "
                            "hypervisor answers there (Hyper-V: HV_X64_MSR_GUEST_OS_ID, 40000000H)")
        if inf is None and p.state.get("hypervisor") is True:
            prov = p.provenance.get("state:hypervisor", "the snapshot")
            inf = Inference("state:hypervisor", True, "this processor runs under a hypervisor",
                            f"state.hypervisor = true ({prov})", ("state:hypervisor",),
                            "the kernel's own record that it runs under a hypervisor")
        if inf is not None:
            self.states["hypervisor"] = inf
        if leaf1 is not None and not leaf1[2] >> 31 & 1 and inf is not None and "cpuid:0x1" not in inf.inputs:
            self.contradictions.append(Contradiction(
                f"CPUID.01H:ECX[31] = 0 ({_source(p, 'cpuid:0x1')})", inf))

    def _vmx_mode(self) -> None:
        p = self.p
        hv = self.states.get("hypervisor")
        cr4 = p.registers.get("cr4")
        inf = None
        if hv is not None:
            inf = Inference("state:vmx", "non-root", "the processor is in VMX non-root operation (a guest of "
                            "another hypervisor: VMXON and VMLAUNCH/VMRESUME go to that hypervisor, which emulates "
                            "them or raises #UD where it hides VMX)", hv.evidence, hv.inputs, hv.sdm)
        elif cr4 is not None and not cr4 >> 13 & 1:
            inf = Inference("state:vmx", "off", "the processor is outside VMX operation (vmx = off)",
                            f"CR4.VMXE = 0 (CR4 = {hexs(cr4)})", ("reg:cr4",),
                            f"Vol.3C 24.7, 24.8 {ED}: CR4.VMXE is fixed to 1 in VMX operation and cannot be cleared "
                            "there")
        if inf is None:
            return
        self.states["vmx"] = inf
        given = p.state.get("vmx")
        if given is not None and given != inf.value:
            self.contradictions.append(Contradiction(f"vmx = {given} ({_source(p, 'state:vmx')})", inf))

    def _a20m_smx(self) -> None:
        p = self.p
        vmx = p.state.get("vmx") or (self.states["vmx"].value if "vmx" in self.states else None)
        if vmx in ("root", "non-root"):
            src = "state:vmx" if "vmx" in p.state else self.states["vmx"].evidence
            self.states["a20m"] = Inference("state:a20m", False, "the processor is not in A20M mode (a20m = 0)",
                                            f"vmx = {vmx} ({src})",
                                            ("state:vmx",) if "vmx" in p.state else self.states["vmx"].inputs,
                                            f"Vol.3C 24.8; Vol.3C 31.3 VMXON {ED}: VMXON blocks and disables A20M, so "
                                            "a processor in VMX operation cannot be in A20M mode")
        cr4 = p.registers.get("cr4")
        if cr4 is not None and not cr4 >> 14 & 1:
            self.states["smx"] = Inference("state:smx", False, "the processor is outside SMX operation (smx = 0)",
                                           f"CR4.SMXE = 0 (CR4 = {hexs(cr4)})", ("reg:cr4",),
                                           f"Vol.2D GETSEC[SENTER] {ED}: SMX operation starts with GETSEC[SENTER], "
                                           "which raises #UD while CR4.SMXE = 0")
        for name in ("a20m", "smx"):
            inf = self.states.get(name)
            if inf is not None and name in p.state and bool(p.state[name]) != inf.value:
                self.contradictions.append(Contradiction(
                    f"{name} = {int(bool(p.state[name]))} ({_source(p, 'state:' + name)})", inf))

    def _maxphyaddr(self) -> None:
        """The widest physical address the state shows in use bounds MAXPHYADDR from below."""
        p = self.p
        addr_bits = ((1 << MAXPHYADDR_CEILING) - 1) & ~0xFFF
        seen: List[Tuple[int, str, str, int]] = []   # (bits needed, what, key, value)

        def use(value: Optional[int], what: str, key: str) -> None:
            if value is not None and value & addr_bits:
                seen.append(((value & addr_bits).bit_length(), what, key, value))

        use(p.registers.get("cr3"), "CR3", "reg:cr3")
        if p.vmcs_pointer is not None and p.vmcs_pointer != NO_VMCS:
            use(p.vmcs_pointer, "the current-VMCS pointer", "state:vmcs_pointer")
        if p.state.get("vmx") == "root":
            use(p.vmxon_pointer, "the VMXON pointer of a processor in VMX root operation", "state:vmxon_pointer")
        use(p.msr.get(0x1B), "IA32_APIC_BASE", "msr:0x1b")
        for index in range(0x200, 0x214):
            use(p.msr.get(index), f"IA32_MTRR_PHYS{'MASK' if index & 1 else 'BASE'}{(index - 0x200) // 2}",
                f"msr:{hexs(index)}")
        if not seen:
            return
        bits, what, key, value = max(seen)
        if bits <= MAXPHYADDR_FLOOR:
            return
        self.maxphyaddr_min = Inference("maxphyaddr", bits, f"MAXPHYADDR >= {bits}",
                                        f"{what} = {hexs(value)} (bit {bits - 1} set)", (key,),
                                        f"Vol.3A 4.1.4 {ED}: physical-address bits at or above MAXPHYADDR are "
                                        "reserved; an address in use fits the processor's width")

    def _beyond_max_subleaf(self, fl: Flag) -> Optional[Inference]:
        if fl.leaf not in SUBLEAF_COUNTED or fl.sub == 0:
            return None
        sub0 = self.p.cpuid.get((fl.leaf, 0))
        if sub0 is None or fl.sub <= sub0[0]:
            return None
        return _fi(fl, 0,
                         f"CPUID.(EAX={fl.leaf:02X}H,ECX=0):EAX = {sub0[0]} (the highest sub-leaf)",
                         (f"cpuid:{hexs(fl.leaf)}",),
                         f"Vol.2A CPUID {ED}: a sub-leaf above the highest one returns 0 in EAX, EBX, ECX and EDX")

    def _field_absent(self, encoding: int) -> Optional[Inference]:
        entry = tables().fields.get(encoding)
        if entry is None:
            return None
        from ..decode import caps, defs
        name, controls = entry
        why = []
        for ctl, bit_name in controls:
            c = defs.control(ctl)
            section = caps.control_section(c, self.p.msr)
            row = next((r for r in section.bits if r.name == bit_name), None)
            if row is None or row.may_be_1 is not False:
                return None
            why.append(f"{section.source} allows only 0 for \"{bit_name.replace('_', ' ')}\" ({ctl} bit {row.bit})")
        keys = tuple(sorted({f"msr:{hexs(defs.control(ctl).capability_msr)}" for ctl, _ in controls}))
        return Inference(f"vmcs:0x{encoding:04x}", None, f"{name} (0x{encoding:04x}) does not exist on this processor",
                         "; ".join(why), keys,
                         f"Vol.3D Appendix B {ED}: the field exists only on processors that support the 1-setting of "
                         "its control")

    def _contradict_reads(self) -> None:
        """A CPUID leaf that was read wins over an inference; a disagreement is reported."""
        if not self.p.cpuid:
            return
        for inf in list(self.flags.values()):
            fl = inf.flag
            regs = self.p.cpuid.get((fl.leaf, fl.sub)) if fl is not None else None
            if fl is None or regs is None:
                continue
            value = regs[fl.reg] >> fl.bit & 1
            if value != inf.value:
                self.contradictions.append(Contradiction(f"{fl.text(value)} ({_source(self.p, fl.leaf_key)})", inf))

    # ------------------------------------------------------------- reporting
    def all_inferences(self) -> List[Inference]:
        out = [i for i in self.flags.values() if not self._read(i)]
        out += [i for k, i in self.states.items() if k not in self.p.state]
        if self.maxphyaddr_min is not None and (0x80000008, 0) not in self.p.cpuid:
            out.append(self.maxphyaddr_min)
        return out

    def _read(self, inf: Inference) -> bool:
        return inf.flag is not None and (inf.flag.leaf, inf.flag.sub) in self.p.cpuid


def evidence_of(p: Processor) -> Evidence:
    """Derive everything this processor's state proves."""
    return Evidence(p).derive()


__all__ = ["Contradiction", "Evidence", "Flag", "Inference", "evidence_of", "flag", "flag_at", "tables"]
