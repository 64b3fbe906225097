"""The rule registry and the engine that turns a snapshot into verdicts.

One rule = a stable id, a slug, a title, an SDM citation with edition, the
instructions it applies to, the tier it runs in, a check function and its
documentation in fixed sections (checks / when broken / fix), plus a failing
and a passing example (patches on a baseline snapshot) that the tests run.

A check is a pure function of a Context. It returns None when the rule holds,
SKIP when its guard is off, or one or more Violations. Reading an input the
snapshot lacks raises Missing inside the Context, which the engine turns into
an `unknown` finding naming that input.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..snapshot import NO_VMCS, Processor, Segment, Snapshot, Table
from ..values import hexs

# CPUID leaf 0 vendor strings of processors that implement AMD's SVM, not VMX: the VMX
# instructions are undefined opcodes there (#UD). Other non-Intel vendors (Centaur,
# Zhaoxin) do implement VMX, so only these two decide anything.
NO_VMX_VENDORS = ("AuthenticAMD", "HygonGenuine")

INSTRUCTIONS = ("vmxon", "vmclear", "vmptrld", "vmlaunch", "vmresume")
ENTRY = ("vmlaunch", "vmresume")


class Tier:
    """The order in which the processor makes its checks (SDM Vol.3C 31.3, 27.1-27.4).

    A lower tier is checked first. A definite failure in a `stops` tier ends the
    instruction there; in the VM-entry tiers every broken rule is still listed.
    Rules in one tier may be checked in any order, so every outcome of a failing
    tier is possible.
    """

    UD = 10            # #UD: not in VMX operation, CR4.VMXE, real/v86/compat mode, CPUID
    NONROOT = 20       # a VM exit when executed in VMX non-root operation
    CPL = 30           # #GP(0): CPL > 0
    IN_ROOT = 40       # VMXON in VMX root operation: VMfail(15)
    GP = 50            # VMXON's other #GP(0) checks: A20M, fixed bits, feature control
    OPERAND = 60       # operand checks: VMfailInvalid / VMfail(n)
    CURRENT_VMCS = 62  # VMLAUNCH/VMRESUME: no current VMCS, shadow VMCS
    MOV_SS = 64        # VMfailValid(26)
    LAUNCH_STATE = 66  # VMfailValid(4) / (5)
    CONTROLS_HOST = 70  # VMfailValid(7) / (8), any order (27.2)
    GUEST = 80         # entry-fail:33:q, any order (27.3)
    MSR_LOAD = 90      # entry-fail:34:n, list order (27.4)

    STOPS = {UD, NONROOT, CPL, IN_ROOT, GP, OPERAND, CURRENT_VMCS, MOV_SS, LAUNCH_STATE}


class Missing(Exception):
    """An input the snapshot does not have; `key` uses DESIGN.md's vocabulary.
    `outcome`, when set, is what the rule would give if the input broke it (e.g.
    "entry-fail:34:3" for the third MSR-load entry); else the rule's outcome."""

    def __init__(self, key: str, what: str = "", outcome: Optional[str] = None) -> None:
        super().__init__(key)
        self.key, self.what, self.outcome = key, what, outcome


class _Skip:
    def __repr__(self) -> str:
        return "SKIP"


SKIP = _Skip()


@dataclass
class Violation:
    """One way a rule is broken. `outcome` overrides the rule's; `certain=False`
    marks an implementation-specific failure (some conforming CPUs pass)."""

    message: str
    fix: Optional[str] = None
    outcome: Optional[str] = None
    certain: bool = True


CheckResult = Union[None, _Skip, Violation, Sequence[Violation]]


@dataclass
class Example:
    """A patch on a named baseline snapshot (see vmxdbg/examples/) and the
    status the rule must then report on `cpu`: 'fail' for a bad example, 'pass'
    for a good one."""

    expect: str
    patch: Dict[str, Any]
    baseline: str = "vmxon"
    cpu: int = 0
    instruction: Optional[str] = None


def bad(patch: Dict[str, Any], baseline: str = "vmxon", **kw: Any) -> Example:
    return Example("fail", patch, baseline, **kw)


def good(patch: Dict[str, Any], baseline: str = "vmxon", **kw: Any) -> Example:
    return Example("pass", patch, baseline, **kw)


@dataclass
class Rule:
    id: str
    slug: str
    title: str
    sdm: str
    instructions: Tuple[str, ...]
    tier: int
    outcome: str
    check: Callable[["Context"], CheckResult]
    checks: str
    broken: str
    fix: str
    examples: List[Example]
    catalog: Tuple[str, ...] = ()
    status: str = "fail"  # "advice" rules never change the outcome
    cross: bool = False   # a cross-processor rule: check(ctx) sees every processor
    order: int = 0


_RULES: Dict[str, Rule] = {}
_SLUGS: Dict[str, str] = {}
_ID = re.compile(r"^[A-Z]+[0-9]{3,4}$")


def rule(*, id: str, slug: str, title: str, sdm: str, instructions: Iterable[str], tier: int,
         outcome: str, checks: str, broken: str, fix: str, examples: Sequence[Example],
         catalog: Iterable[str] = (), status: str = "fail", cross: bool = False
         ) -> Callable[[Callable[["Context"], CheckResult]], Callable[["Context"], CheckResult]]:
    """Register a rule. Duplicate ids or slugs fail at import."""
    def deco(fn: Callable[["Context"], CheckResult]) -> Callable[["Context"], CheckResult]:
        if not _ID.match(id):
            raise ValueError(f"rule id {id!r} must look like VMXON001")
        if id in _RULES:
            raise ValueError(f"duplicate rule id {id} ({fn.__module__}.{fn.__name__})")
        if slug in _SLUGS:
            raise ValueError(f"duplicate rule slug {slug} ({id} and {_SLUGS[slug]})")
        insns = tuple(instructions)
        for i in insns:
            if i not in INSTRUCTIONS:
                raise ValueError(f"rule {id}: unknown instruction {i}")
        if "(SDM" not in sdm and "edition" not in sdm:
            raise ValueError(f"rule {id}: the SDM citation must name its edition")
        if not any(e.expect == "fail" for e in examples) or not any(e.expect == "pass" for e in examples):
            raise ValueError(f"rule {id}: needs a failing and a passing example")
        _RULES[id] = Rule(id, slug, title, sdm, insns, tier, outcome, fn, checks.strip(),
                          broken.strip(), fix.strip(), list(examples), tuple(catalog), status,
                          cross, len(_RULES))
        _SLUGS[slug] = id
        return fn
    return deco


def all_rules() -> List[Rule]:
    """Every registered rule, in registration order."""
    from . import load_all  # noqa: F401  (imports every rule module once)
    load_all()
    return sorted(_RULES.values(), key=lambda r: r.order)


def get_rule(rule_id: str) -> Rule:
    all_rules()
    return _RULES[rule_id]


# ---------------------------------------------------------------- the context

class Context:
    """Read access to one processor's inputs; records what each check read."""

    def __init__(self, snapshot: Snapshot, cpu: int, instruction: Optional[str] = None) -> None:
        self.snapshot = snapshot
        self.cpu = cpu
        self.instruction = instruction  # the instruction being judged, when one is
        self.p: Processor = snapshot.processors[cpu]
        self.used: List[str] = []

    def _use(self, key: str) -> None:
        if key not in self.used:
            self.used.append(key)

    def missing(self, key: str, what: str = "") -> Missing:
        self._use(key)
        return Missing(key, what)

    # raw inputs -------------------------------------------------------------
    def msr(self, index: int) -> int:
        key = f"msr:{hexs(index)}"
        self._use(key)
        if index not in self.p.msr:
            raise Missing(key)
        return self.p.msr[index]

    def has_msr(self, index: int) -> bool:
        return index in self.p.msr

    def reg(self, name: str) -> int:
        key = f"reg:{name}"
        self._use(key)
        if name not in self.p.registers:
            raise Missing(key)
        return self.p.registers[name]

    def seg(self, name: str, part: str) -> int:
        key = f"reg:{name}"
        self._use(key)
        s = self.p.segments.get(name) or Segment()
        v = getattr(s, part)
        if v is None:
            raise Missing(key, f"{name}.{part}")
        return v

    def table(self, name: str, part: str) -> int:
        key = f"reg:{name}"
        self._use(key)
        t = self.p.tables.get(name) or Table()
        v = getattr(t, part)
        if v is None:
            raise Missing(key, f"{name}.{part}")
        return v

    def cpuid(self, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        key = f"cpuid:{hexs(leaf)}" + (f".{subleaf:x}" if subleaf else "")
        self._use(key)
        if (leaf, subleaf) not in self.p.cpuid:
            raise Missing(key)
        return self.p.cpuid[(leaf, subleaf)]

    def state(self, name: str) -> Any:
        key = f"state:{name}"
        self._use(key)
        if name not in self.p.state:
            raise Missing(key)
        return self.p.state[name]

    def vmcs(self, field_: Union[int, str]) -> int:
        enc = _encoding(field_)
        key = f"vmcs:0x{enc:04x}"
        self._use(key)
        if enc not in self.p.vmcs:
            raise Missing(key, _field_name(enc))
        return self.p.vmcs[enc]

    def mem(self, address: int, size: int) -> bytes:
        key = f"mem:{hexs(address)}"
        self._use(key)
        data = self.snapshot.memory.read(address, size)
        if data is None:
            raise Missing(key, f"{size} bytes of physical memory")
        return data

    def vmxon_pointer(self) -> int:
        self._use("state:vmxon_pointer")
        if self.p.vmxon_pointer is None:
            raise Missing("state:vmxon_pointer")
        return self.p.vmxon_pointer

    def vmcs_pointer(self) -> int:
        self._use("state:vmcs_pointer")
        if self.p.vmcs_pointer is None:
            raise Missing("state:vmcs_pointer")
        return self.p.vmcs_pointer

    def launch_state(self) -> str:
        self._use("state:vmcs_launch_state")
        if self.p.vmcs_launch_state is None:
            raise Missing("state:vmcs_launch_state")
        return self.p.vmcs_launch_state

    def operand(self, instruction: str) -> int:
        key = f"state:{instruction}_operand"
        self._use(key)
        if instruction not in self.p.operands:
            raise Missing(key)
        return self.p.operands[instruction]

    def linear(self, name: str) -> int:
        """A linear address the snapshot records (`vmxon_region`, `vmcs_region`)."""
        key = f"state:linear.{name}"
        self._use(key)
        if name not in self.p.linear:
            raise Missing(key, f"the linear address the driver maps its {name.replace('_', ' ')} at")
        return self.p.linear[name]

    # derived inputs ---------------------------------------------------------
    def vmx_mode(self) -> str:
        """'off', 'root' or 'non-root'. Without `state.vmx`, CR4.VMXE = 0 proves
        'off' (CR4.VMXE is fixed to 1 in VMX operation, SDM Vol.3C 24.8); CR4.VMXE = 1
        leaves it unknown."""
        if "vmx" not in self.p.state and "cr4" in self.p.registers and not self.reg("cr4") >> 13 & 1:
            return "off"
        return str(self.state("vmx"))

    def has_current_vmcs(self) -> bool:
        return self.vmcs_pointer() != NO_VMCS

    def physical_address_fits(self, address: int) -> bool:
        """Whether `address` fits the width VMX structures may use: 32 bits when
        IA32_VMX_BASIC[48] = 1, else MAXPHYADDR. Without CPUID 80000008H the SDM's
        bounds still decide most addresses: MAXPHYADDR is at least 32 and at most 52
        (Vol.3A 4.1.4); only an address between them is unknown."""
        if self.msr(0x480) >> 48 & 1:
            return address >> 32 == 0
        if (0x80000008, 0) in self.p.cpuid or address >> 52 == 0 and address >> 32 != 0:
            return address >> self.maxphyaddr() == 0
        return address >> 32 == 0

    def vmx_supported(self) -> bool:
        """CPUID.1:ECX.VMX, or evidence of it where CPUID cannot be read (a kernel
        debugger cannot execute CPUID): the vendor string of CPUID leaf 0 names a
        vendor whose processors have no VMX (NO_VMX_VENDORS), IA32_VMX_BASIC was read
        (RDMSR of it #GPs without VMX, Vol.3D A.1), or CR4.VMXE = 1 (setting it #GPs
        without VMX)."""
        if (1, 0) in self.p.cpuid:
            return bool(self.cpuid(1)[2] >> 5 & 1)
        if self.p.state.get("vendor") in NO_VMX_VENDORS:
            self._use("state:vendor")
            return False
        if 0x480 in self.p.msr:
            self._use("msr:0x480")
            return True
        if "cr4" in self.p.registers and self.reg("cr4") >> 13 & 1:
            return True
        raise self.missing("cpuid:0x1")

    def maxphyaddr(self) -> int:
        """CPUID.80000008H:EAX[7:0] (SDM Vol.3A 4.1.4)."""
        return self.cpuid(0x80000008)[0] & 0xFF

    def long_mode_active(self) -> bool:
        return bool(self.reg("efer") & (1 << 10))

    def cpl(self) -> int:
        """CPL: state.cpl when known, else CS.selector RPL (equal to CPL in protected mode)."""
        if "cpl" in self.p.state:
            return int(self.state("cpl"))
        return self.seg("cs", "selector") & 3


def _encoding(field_: Union[int, str]) -> int:
    if isinstance(field_, int):
        return field_
    return _encoding_of_name(field_)


@functools.lru_cache(maxsize=None)
def _encoding_of_name(name: str) -> int:
    from ..decode import defs
    return defs.vmcs_field(name).encoding


@functools.lru_cache(maxsize=None)
def _field_name(enc: int) -> str:
    try:
        from ..decode import defs
        return defs.vmcs_field(enc).name
    except Exception:  # an unknown encoding simply has no name
        return ""
