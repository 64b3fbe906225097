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

from ..state.evidence import Evidence, Inference, evidence_of, flag_at
from ..common.statekeys import BOOL_STATES, NO_VMCS, VMX_MODES
from ..state.snapshot import Processor, Segment, Snapshot, Table
from ..common.numbers import hexs
from .bits import BASIC_PHYS32, reg_bit, reg_field

CPUID_PHYS_BITS = reg_field("CPUID_80000008_EAX", "physical_address_bits")
CPUID_LINEAR_BITS = reg_field("CPUID_80000008_EAX", "linear_address_bits")
EFER_LMA = reg_bit("IA32_EFER", "lma")
SEL_RPL = reg_field("SEGMENT_SELECTOR", "rpl")

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
    """An input the snapshot does not have; `key` uses docs/formats.md's vocabulary.
    `outcome`, when set, is what the rule would give if the input broke it (e.g.
    "entry-fail:34:3" for the third MSR-load entry); else the rule's outcome.
    `choices`, when set, are every value the input can have (a flag: 0 and 1);
    the engine then tries each, through `slot`, and a rule that gives the same
    result for all of them is decided without the input."""

    def __init__(self, key: str, what: str = "", outcome: Optional[str] = None, *,
                 slot: Optional[str] = None, choices: Optional[Sequence[Any]] = None) -> None:
        super().__init__(key)
        self.key, self.what, self.outcome = key, what, outcome
        self.slot = slot or key
        self.choices = tuple(choices) if choices is not None else None


class Absent(Exception):
    """A VMCS field that does not exist on this processor (evidence: its only controls may
    not be 1). A rule that needs it cannot apply: no outcome can come from it."""

    def __init__(self, inference: "Inference") -> None:
        super().__init__(inference.conclusion)
        self.inference = inference


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
    defined_in: str = ""  # a structs/ table row, for a rule made from one (else see `where`)

    @property
    def where(self) -> str:
        """Where the rule is defined: its structs/ table row, or its check's module and function."""
        fn = self.check
        return self.defined_in or f"{fn.__module__.replace('.', '/')}.py, {fn.__name__}()"


_RULES: Dict[str, Rule] = {}
_SLUGS: Dict[str, str] = {}
_ID = re.compile(r"^[A-Z]+[0-9]{3,4}$")


def rule(*, id: str, slug: str, title: str, sdm: str, instructions: Iterable[str], tier: int,
         outcome: str, checks: str, broken: str, fix: str, examples: Sequence[Example],
         catalog: Iterable[str] = (), status: str = "fail", cross: bool = False,
         defined_in: Optional[str] = None) -> Callable[[Callable[["Context"], CheckResult]], Callable[["Context"], CheckResult]]:
    """Register a rule. Duplicate ids or slugs fail at import. `defined_in` names the
    structs/ table row a generated rule comes from (default: the check's module and function)."""
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
                          cross, len(_RULES), defined_in or "")
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

_UNSET = object()


class Context:
    """Read access to one processor's inputs; records what each check read.

    An input that was not read is looked up in the processor's Evidence (what the
    state proves, vmxdbg/state/evidence.py); each inference used is recorded in
    `inferences` so the finding can show it. `overrides` pins an input the engine
    is trying every value of (see Missing.choices)."""

    def __init__(self, snapshot: Snapshot, cpu: int, instruction: Optional[str] = None,
                 evidence: Optional[Evidence] = None, overrides: Optional[Dict[str, Any]] = None) -> None:
        self.snapshot = snapshot
        self.cpu = cpu
        self.instruction = instruction  # the instruction being judged, when one is
        self.p: Processor = snapshot.processors[cpu]
        self.used: List[str] = []
        self.inferences: List[Inference] = []
        self.regardless: List[str] = []
        self.overrides: Dict[str, Any] = overrides if overrides is not None else {}
        self._evidence = evidence

    @property
    def evidence(self) -> Evidence:
        if self._evidence is None:
            self._evidence = evidence_of(self.p)
        return self._evidence

    def branch(self, slot: str, value: Any) -> "Context":
        """A Context like this one with input `slot` pinned to `value`."""
        return Context(self.snapshot, self.cpu, self.instruction, self._evidence, {**self.overrides, slot: value})

    def absorb(self, other: "Context") -> None:
        """Take over what a branch read and inferred."""
        for k in other.used:
            self._use(k)
        for i in other.inferences:
            self._infer(i)
        for r in other.regardless:
            if r not in self.regardless:
                self.regardless.append(r)

    def _use(self, key: str) -> None:
        if key not in self.used:
            self.used.append(key)

    def _infer(self, inference: Inference) -> None:
        for k in inference.inputs:
            self._use(k)
        if inference not in self.inferences:
            self.inferences.append(inference)

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
        """A whole CPUID leaf as read. Rules that need one flag use cpuid_bit, which
        evidence can decide; this is for values no state proves (counts, widths)."""
        key = f"cpuid:{hexs(leaf)}" + (f".{subleaf:x}" if subleaf else "")
        self._use(key)
        if (leaf, subleaf) not in self.p.cpuid:
            raise Missing(key)
        return self.p.cpuid[(leaf, subleaf)]

    def cpuid_bit(self, leaf: int, subleaf: int, reg: int, bit: int) -> int:
        """CPUID.(EAX=leaf,ECX=subleaf):reg[bit] (reg 0..3 = EAX..EDX): as read, else as the
        state proves it (an inference, recorded), else Missing with both values as choices."""
        fl = flag_at(leaf, subleaf, reg, bit)
        if fl.slot in self.overrides:
            self._use(fl.leaf_key)
            return int(self.overrides[fl.slot])
        if (leaf, subleaf) in self.p.cpuid:
            return self.cpuid(leaf, subleaf)[reg] >> bit & 1
        inf = self.evidence.flag(leaf, subleaf, reg, bit)
        if inf is not None:
            self._infer(inf)
            return int(inf.value)
        self._use(fl.leaf_key)
        raise Missing(fl.leaf_key, fl.text(0)[:-4], slot=fl.slot, choices=(0, 1))

    def state(self, name: str) -> Any:
        """A state no debugger reads directly: as given (snapshot or --assume), else as the
        state proves it, else Missing (with every value it can have as choices)."""
        key = f"state:{name}"
        self._use(key)
        if key in self.overrides:
            return self.overrides[key]
        if name in self.p.state:
            return self.p.state[name]
        inf = self.evidence.states.get(name)
        if inf is not None:
            self._infer(inf)
            return inf.value
        choices: Optional[Tuple[Any, ...]] = None
        if name in BOOL_STATES:
            choices = (False, True)
        elif name == "vmx":
            choices = VMX_MODES
        elif name == "cpl":
            choices = (0, 1, 2, 3)
        raise Missing(key, slot=key, choices=choices)

    def vmcs(self, field_: Union[int, str]) -> int:
        enc = _encoding(field_)
        key = f"vmcs:0x{enc:04x}"
        self._use(key)
        if enc not in self.p.vmcs:
            absent = self.evidence.absent_field(enc)
            if absent is not None:
                self._infer(absent)
                raise Absent(absent)
            raise Missing(key, _field_name(enc))
        return self.p.vmcs[enc]

    def mem(self, address: int, size: int) -> bytes:
        key = f"mem:{hexs(address)}"
        self._use(key)
        if size == 1 and key in self.overrides:
            return bytes([self.overrides[key]])
        data = self.snapshot.memory.read(address, size)
        if data is None:
            raise Missing(key, f"{size} bytes of physical memory", slot=key,
                          choices=range(256) if size == 1 else None)
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
        """'off', 'root' or 'non-root': state.vmx as given, else as the state proves it
        (CR4.VMXE = 0: off; a hypervisor underneath: non-root; see evidence.py)."""
        return str(self.state("vmx"))

    def has_current_vmcs(self) -> bool:
        return self.vmcs_pointer() != NO_VMCS

    def physical_address_fits(self, address: int) -> bool:
        """Whether `address` fits the width VMX structures may use: 32 bits when
        IA32_VMX_BASIC[48] = 1, else MAXPHYADDR. Without CPUID 80000008H the bounds
        still decide most addresses: MAXPHYADDR is at most 52 (Vol.3A 4.1.4) and at
        least 32, or the width of an address the state shows in use (evidence)."""
        if BASIC_PHYS32(self.msr(0x480)):
            return address >> 32 == 0
        if (0x80000008, 0) in self.p.cpuid or "maxphyaddr" in self.overrides:
            return address >> self.maxphyaddr() == 0
        if address >> 52:
            return False
        floor = self.evidence.maxphyaddr_floor()
        if address >> floor == 0:
            if address >> 32 and self.evidence.maxphyaddr_min is not None:
                self._infer(self.evidence.maxphyaddr_min)
            return True
        return address >> self.maxphyaddr() == 0

    def vmx_supported(self) -> bool:
        """CPUID.1:ECX.VMX, or what the state proves of it (a VMX capability MSR read,
        CR4.VMXE = 1, an AMD vendor string: see evidence.py)."""
        return bool(self.cpuid_bit(1, 0, 2, 5))

    def maxphyaddr(self) -> int:
        """CPUID.80000008H:EAX[7:0] (SDM Vol.3A 4.1.4); without it every width from the
        evidence's lower bound to 52 is a choice the engine can try."""
        if "maxphyaddr" in self.overrides:
            self._use("cpuid:0x80000008")
            return int(self.overrides["maxphyaddr"])
        if (0x80000008, 0) in self.p.cpuid:
            return CPUID_PHYS_BITS(self.cpuid(0x80000008)[0])
        self._use("cpuid:0x80000008")
        floor = self.evidence.maxphyaddr_floor()
        if self.evidence.maxphyaddr_min is not None:
            self._infer(self.evidence.maxphyaddr_min)
        raise Missing("cpuid:0x80000008", "MAXPHYADDR", slot="maxphyaddr", choices=range(floor, 53))

    def linear_width(self) -> int:
        """The linear-address width, CPUID.80000008H:EAX[15:8]. Without the leaf: 57 where
        the processor supports 5-level paging (CPUID.(7,0):ECX.LA57, read or proved by
        CR4.LA57 = 1) and 48 where it does not (Vol.3A 4.1.4: "generally"); else both
        are choices. A width no 64-bit processor reports leaves the rule unknown."""
        if "linear_width" in self.overrides:
            self._use("cpuid:0x80000008")
            return int(self.overrides["linear_width"])
        if (0x80000008, 0) in self.p.cpuid:
            n = CPUID_LINEAR_BITS(self.cpuid(0x80000008)[0])
            if not 32 <= n <= 64:
                raise Missing("cpuid:0x80000008", f"a linear-address width of {n} bits (EAX[15:8])")
            return n
        try:
            la57 = self.cpuid_bit(7, 0, 2, 16)
        except Missing:
            self._use("cpuid:0x80000008")
            raise Missing("cpuid:0x80000008", "the linear-address width", slot="linear_width",
                          choices=(48, 57)) from None
        n = 57 if la57 else 48
        fl = flag_at(7, 0, 2, 16)
        self._infer(Inference("linear_width", n, f"the linear-address width is {n} bits", fl.text(la57),
                              (fl.leaf_key,), "Vol.3A 4.1.4 (SDM 325462-080US, 2023): CPUID.80000008H:EAX[15:8] is "
                              "generally 57 where CPUID.(EAX=07H,ECX=0):ECX.LA57 = 1 and 48 where it is 0"))
        return n

    def long_mode_active(self) -> bool:
        return bool(self.reg("efer") & EFER_LMA)

    def cpl(self) -> int:
        """CPL: state.cpl when known, else CS.selector RPL (equal to CPL in protected mode)."""
        if "cpl" in self.p.state or "state:cpl" in self.overrides:
            return int(self.state("cpl"))
        return SEL_RPL(self.seg("cs", "selector"))


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
