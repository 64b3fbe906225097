"""Which values WRMSR accepts: the table in structs/msr_values.yaml and its evaluation.

`wrmsr_problems(ctx, rule, value)` lists why WRMSR of `value` at CPL 0 would
#GP on this processor (reserved bits, a non-canonical address, an invalid PAT
type, a read-only or locked MSR, an MSR the processor lacks). It reads only
the CPUID leaves / MSRs that decide the bits actually set, so a missing input
is reported only when it matters, and a certain problem is never hidden by an
unknown one. Used by the guest MSR-field checks (SDM Vol.3C 27.3.1.1) and the
VM-entry MSR-load checks (27.4).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..decode.loader import _File, default_directory
from ..common.errors import DefinitionError
from ..common.numbers import hexs
from .bits import reg_field
from .engine import Context, Missing
from .vmcsctl import is_canonical as canonical, linear_width

# CPUID.0AH: general-purpose counters (EAX[15:8]) and contiguous fixed counters (EDX[4:0])
PMU_GP_COUNTERS = reg_field("CPUID_0A_EAX", "gp_counters")
PMU_FIXED_COUNTERS = reg_field("CPUID_0A_EDX", "fixed_counters")

FILE = "msr_values.yaml"
_CPUID = re.compile(r"^cpuid:(0x[0-9a-fA-F]+)(?:\.(\d+))?\.(eax|ebx|ecx|edx)\[(\d+)(?::(\d+))?\](?:>=(\d+))?$")
_MSR = re.compile(r"^msr:(0x[0-9a-fA-F]+)\[(\d+)\]$")
_PAT_TYPES = (0, 1, 4, 5, 6, 7)


@dataclass(frozen=True)
class Feature:
    """A condition on this processor: `always`, a CPUID bit/count, an MSR bit, or a counter rule."""

    text: str
    kind: str                   # always | cpuid | msr | gp_counters | fixed_counters
    leaf: int = 0
    subleaf: int = 0
    reg: int = 0                # 0..3 = eax..edx
    hi: int = 0
    lo: int = 0
    at_least: Optional[int] = None
    msr: int = 0

    def holds(self, ctx: Context) -> bool:
        """Whether the feature is present (Missing when its CPUID leaf / MSR is unknown)."""
        if self.kind == "always":
            return True
        if self.kind == "cpuid" and self.hi == self.lo and self.at_least is None:
            return bool(ctx.cpuid_bit(self.leaf, self.subleaf, self.reg, self.lo))  # evidence can decide a flag
        if self.kind == "cpuid":
            v = ctx.cpuid(self.leaf, self.subleaf)[self.reg] >> self.lo & ((1 << (self.hi - self.lo + 1)) - 1)
            return v >= self.at_least if self.at_least is not None else bool(v)
        if self.kind == "msr":
            return bool(ctx.msr(self.msr) >> self.lo & 1)
        raise ValueError(f"{self.text} is decided per bit")


@dataclass(frozen=True)
class MsrRule:
    """What WRMSR accepts for one MSR (or a range of MSRs sharing the rule)."""

    name: str
    first: int
    last: int
    sdm: str
    confidence: str
    exists: Tuple[Feature, ...]
    valid: Tuple[Tuple[int, Feature], ...]   # (mask, feature that makes those bits writable)
    address: Optional[int] = None            # bits 63:address form a linear address
    pat: bool = False
    read_only: bool = False
    writable_unless: Optional[Feature] = None

    def label(self, index: int) -> str:
        return f"{self.name} (MSR {hexs(index)})" if self.first == self.last else f"{self.name} MSR {hexs(index)}"

    @property
    def always_reserved(self) -> int:
        """Bits no `valid` entry covers."""
        covered = 0
        for mask, _ in self.valid:
            covered |= mask
        return ~covered & (1 << 64) - 1


def _feature(f: _File, value: object, key: str) -> Feature:
    text = f.text(value, key)
    if text in ("always", "gp_counters", "fixed_counters"):
        return Feature(text, text)
    m = _CPUID.match(text)
    if m:
        hi = int(m.group(4))
        lo = int(m.group(5)) if m.group(5) is not None else hi
        if lo > hi or hi > 31:
            raise f.fail(key, f"{text!r}: bad bit range")
        return Feature(text, "cpuid", int(m.group(1), 16), int(m.group(2) or 0), "abcd".index(m.group(3)[1]),
                       hi, lo, int(m.group(6)) if m.group(6) is not None else None)
    m = _MSR.match(text)
    if m:
        return Feature(text, "msr", msr=int(m.group(1), 16), hi=int(m.group(2)), lo=int(m.group(2)))
    raise f.fail(key, f"{text!r} is not a feature (always, cpuid:LEAF[.SUB].REG[BIT], msr:INDEX[BIT], "
                      "gp_counters, fixed_counters)")


def load_table(directory: Optional[object] = None) -> Dict[str, MsrRule]:
    """Read and validate structs/msr_values.yaml; DefinitionError names the file and key."""
    from pathlib import Path
    d = default_directory() if directory is None else Path(str(directory))
    f = _File(d, FILE, f"structs/{FILE}" if directory is None else str(d / FILE))
    raw = f.load("msrs")
    if not isinstance(raw, dict) or not raw:
        raise f.fail("msrs", "expected a non-empty mapping of MSR names")
    out: Dict[str, MsrRule] = {}
    allowed = ("index", "range", "sdm", "confidence", "exists", "valid", "address", "pat", "read_only",
               "writable_unless")
    for name, body in raw.items():
        key = f"msrs.{name}"
        f.text(name, key, re.compile(r"^[A-Z][A-Z0-9_]*$"), "an upper-case MSR name")
        f.mapping(body, key, allowed, ("sdm", "confidence", "valid"))
        if ("index" in body) == ("range" in body):
            raise f.fail(key, "give exactly one of index and range")
        if "index" in body:
            first = last = f.integer(body["index"], f"{key}.index", 0, 0xFFFFFFFF)
        else:
            rng = body["range"]
            if not isinstance(rng, list) or len(rng) != 2:
                raise f.fail(f"{key}.range", "expected [first, last]")
            first, last = (f.integer(v, f"{key}.range", 0, 0xFFFFFFFF) for v in rng)
            if first > last:
                raise f.fail(f"{key}.range", "first exceeds last")
        if body["confidence"] not in ("high", "medium", "low"):
            raise f.fail(f"{key}.confidence", "expected high, medium or low")
        exists = body.get("exists", [])
        if not isinstance(exists, list):
            raise f.fail(f"{key}.exists", "expected a list of features")
        valid_raw = body["valid"]
        if not isinstance(valid_raw, dict) or not valid_raw:
            raise f.fail(f"{key}.valid", "expected a mapping of bit ranges to features")
        valid = []
        seen = 0
        for bits, feat in valid_raw.items():
            k = f"{key}.valid.{bits}"
            hi, lo = f.bits(bits, k, 64)
            mask = ((1 << (hi - lo + 1)) - 1) << lo
            if mask & seen:
                raise f.fail(k, "overlaps another bit range")
            seen |= mask
            valid.append((mask, _feature(f, feat, k)))
        address = body.get("address")
        if address is not None:
            address = f.integer(address, f"{key}.address", 0, 63)
        for flag in ("pat", "read_only"):
            if flag in body and not isinstance(body[flag], bool):
                raise f.fail(f"{key}.{flag}", "expected true or false")
        unless = body.get("writable_unless")
        out[name] = MsrRule(
            name, first, last, f.text(body["sdm"], f"{key}.sdm"), body["confidence"],
            tuple(_feature(f, e, f"{key}.exists[{i}]") for i, e in enumerate(exists)), tuple(valid), address,
            bool(body.get("pat", False)), bool(body.get("read_only", False)),
            _feature(f, unless, f"{key}.writable_unless") if unless is not None else None)
    ranges = sorted((r.first, r.last, r.name) for r in out.values())
    for (a1, b1, n1), (a2, _, n2) in zip(ranges, ranges[1:]):
        if a2 <= b1:
            raise f.fail(f"msrs.{n2}", f"its index overlaps {n1}")
    return out


@functools.lru_cache(maxsize=1)
def table() -> Dict[str, MsrRule]:
    """The table, loaded once."""
    return load_table()


def rule_for(index: int) -> Optional[MsrRule]:
    """The rule covering MSR `index`, or None when the table does not know it."""
    for r in table().values():
        if r.first <= index <= r.last:
            return r
    return None


def by_name(name: str) -> MsrRule:
    try:
        return table()[name]
    except KeyError:
        raise DefinitionError(f"no MSR {name!r}", source=f"structs/{FILE}") from None


def _counter_problems(ctx: Context, feature: Feature, bits: int) -> int:
    """The bits of `bits` that name counters this processor lacks."""
    eax, _, ecx, edx = ctx.cpuid(0xA)
    bad = 0
    for b in range(64):
        if not bits >> b & 1:
            continue
        if feature.kind == "gp_counters":
            ok = b < PMU_GP_COUNTERS(eax)
        else:
            i = b - 32
            ok = i < PMU_FIXED_COUNTERS(edx) or bool(ecx >> i & 1)
        if not ok:
            bad |= 1 << b
    return bad


def reserved_bits(ctx: Context, rule: MsrRule, value: int) -> int:
    """Bits of `value` WRMSR would reject as reserved on this processor.

    Missing is raised only when an unknown feature decides a set bit and no
    other set bit is already certainly reserved."""
    bad = value & rule.always_reserved
    pending: Optional[Missing] = None
    for mask, feat in rule.valid:
        bits = value & mask
        if not bits or feat.kind == "always":
            continue
        try:
            if feat.kind in ("gp_counters", "fixed_counters"):
                bad |= _counter_problems(ctx, feat, bits)
            elif not feat.holds(ctx):
                bad |= bits
        except Missing as exc:
            pending = pending or exc
    if pending is not None and not bad:
        raise pending
    return bad


def pat_problems(value: int) -> List[int]:
    """Indexes (0-7) of PAT entries that are not a valid memory type."""
    return [i for i in range(8) if value >> (8 * i) & 0xFF not in _PAT_TYPES]


def wrmsr_problems(ctx: Context, rule: MsrRule, index: int, value: int) -> List[str]:
    """Why WRMSR(index, value) at CPL 0 would #GP; empty when it would not."""
    label = rule.label(index)
    out: List[str] = []
    if rule.read_only:
        return [f"{label} is read-only: WRMSR always raises #GP"]
    if rule.writable_unless is not None and rule.writable_unless.holds(ctx):
        return [f"{label} is locked ({rule.writable_unless.text} = 1): WRMSR raises #GP"]
    for feat in rule.exists:
        if not feat.holds(ctx):
            return [f"this processor has no {label} ({feat.text} is 0): WRMSR raises #GP"]
    bad = reserved_bits(ctx, rule, value)
    if bad:
        out.append(f"value {hexs(value)} sets bits {hexs(bad)} that {label} reserves on this processor")
    if rule.pat:
        for i in pat_problems(value):
            out.append(f"{label} entry PA{i} = {value >> (8 * i) & 0xFF} is not a memory type (0, 1, 4, 5, 6 or 7)")
    if rule.address is not None:
        addr = value & ~((1 << rule.address) - 1) & (1 << 64) - 1
        try:
            width = linear_width(ctx)
        except Missing:
            if out:
                return out  # already certain to #GP
            raise
        if not canonical(addr, width):
            where = f"bits 63:{rule.address} of " if rule.address else ""
            out.append(f"{where}value {hexs(value)} is not a canonical address ({width}-bit linear addresses)")
    return out


__all__ = ["Feature", "MsrRule", "load_table", "table", "rule_for", "by_name", "reserved_bits",
           "pat_problems", "wrmsr_problems"]
