"""The guest segment-register checks of VM entry: one parametrised check, one rule per table row.

Source: SDM Vol.3C 27.3.1.2 "Checks on Guest Segment Registers" (SDM
325462-080US, 2023). structs/guest_segments.yaml lists, per row, the register
(CS, SS, DS, ES, FS, GS, TR, LDTR), the kind of check, when it applies (always,
only for a virtual-8086 guest, only otherwise; only when the register is
usable), the rule id, the catalog id and the failing / passing examples. The
kinds are implemented once here; the unrestricted-guest relaxations (SS.RPL,
SS.DPL, DS-GS DPL vs RPL, CS type 3) are decided by the effective control
(entrystate.unrestricted), which is 0 unless the secondary controls are
activated.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...decode import defs
from ...decode.loader import _File, default_directory
from ...common.numbers import hexs
from ..bits import reg_bit, reg_field
from ..engine import ENTRY, SKIP, CheckResult, Context, Tier, Violation, bad, good, rule
from ..entrystate import field_label, ia32e_guest, intel64, show, unrestricted, v86_guest
from ..vmcsctl import is_canonical as canonical, linear_width

FILE = "guest_segments.yaml"
SDM = "Vol.3C 27.3.1.2 Checks on Guest Segment Registers (SDM 325462-080US, 2023)"
OUTCOME = "entry-fail:33:0"
WHENS = ("always", "v86", "not_v86")
_ID = re.compile(r"^GUEST[0-9]{3}$")
_PLACEHOLDERS = {"SEL": "selector", "BASE": "base", "LIMIT": "limit", "AR": "ar"}
UNUSABLE = reg_bit("ACCESS_RIGHTS", "unusable")
# access-rights fields by their structs/registers.yaml names (Vol.3C 25.4.1 Table 25-2)
AR_TYPE, AR_S, AR_DPL, AR_G = (reg_field("ACCESS_RIGHTS", n) for n in ("type", "s", "dpl", "g"))
AR_P, AR_L, AR_DB = (reg_bit("ACCESS_RIGHTS", n) for n in ("p", "l", "db"))
AR_RSVD_11_8 = reg_field("ACCESS_RIGHTS", "reserved_11_8").mask
AR_RSVD_31_17 = reg_field("ACCESS_RIGHTS", "reserved_31_17").mask
TYPE_CODE, TYPE_READABLE = reg_bit("SEGMENT_TYPE", "code"), reg_bit("SEGMENT_TYPE", "readable_writable")
SEL_RPL, SEL_TI = reg_field("SEGMENT_SELECTOR", "rpl"), reg_bit("SEGMENT_SELECTOR", "ti")


@dataclass(frozen=True)
class Register:
    """The four VMCS fields of one guest segment register."""

    name: str
    selector: str
    base: str
    limit: str
    ar: str

    def encoding(self, part: str) -> int:
        return _encodings(self)[part]


@functools.lru_cache(maxsize=None)
def _encodings(reg: Register) -> Dict[str, int]:
    return {p: defs.vmcs_field(getattr(reg, p)).encoding for p in ("selector", "base", "limit", "ar")}


@dataclass(frozen=True)
class Kind:
    name: str
    when: str
    item: str
    title: str
    checks: str
    broken: str
    fix: str


@dataclass(frozen=True)
class Row:
    id: str
    catalog: str
    reg: Register
    kind: Kind
    when: str
    usable_only: bool
    values: Tuple[int, ...]
    bad: Dict[str, Any]
    good: Dict[str, Any]
    baseline: str


@dataclass(frozen=True)
class Table:
    registers: Dict[str, Register]
    kinds: Dict[str, Kind]
    rows: Tuple[Row, ...]


# ------------------------------------------------------------------ the checks

def _seg(ctx: Context, reg: Register, part: str) -> int:
    return ctx.vmcs(reg.encoding(part))


def _type(ar: int) -> int:
    return AR_TYPE(ar)


def _dpl(ar: int) -> int:
    return AR_DPL(ar)


def _v(ctx: Context, reg: Register, part: str, text: str) -> Violation:
    return Violation(f"{show(ctx, getattr(reg, part))}: {text}")


def k_sel_ti(ctx: Context, row: Row) -> CheckResult:
    if _seg(ctx, row.reg, "selector") & SEL_TI:
        return _v(ctx, row.reg, "selector", "TI (bit 2) is 1")
    return None


def k_ss_rpl_eq_cs_rpl(ctx: Context, row: Row) -> CheckResult:
    if unrestricted(ctx):
        return SKIP
    ss, cs = ctx.vmcs("GUEST_SS_SELECTOR"), ctx.vmcs("GUEST_CS_SELECTOR")
    if SEL_RPL(ss) != SEL_RPL(cs):
        return Violation(f"{show(ctx, 'GUEST_SS_SELECTOR')} has RPL {SEL_RPL(ss)} but {show(ctx, 'GUEST_CS_SELECTOR')} "
                         f"has RPL {SEL_RPL(cs)} (\"unrestricted guest\" is not in effect)")
    return None


def k_v86_base(ctx: Context, row: Row) -> CheckResult:
    sel, base = _seg(ctx, row.reg, "selector"), _seg(ctx, row.reg, "base")
    if base != sel << 4:
        return Violation(f"{show(ctx, row.reg.base)} is not {show(ctx, row.reg.selector)} << 4 "
                         f"({hexs(sel << 4)}) in a virtual-8086 guest")
    return None


def k_base_canonical(ctx: Context, row: Row) -> CheckResult:
    if not intel64(ctx):
        return SKIP
    base, width = _seg(ctx, row.reg, "base"), linear_width(ctx)
    if not canonical(base, width):
        return _v(ctx, row.reg, "base", f"not canonical (bits 63:{width - 1} differ)")
    return None


def k_base_high(ctx: Context, row: Row) -> CheckResult:
    if not intel64(ctx):
        return SKIP
    if _seg(ctx, row.reg, "base") >> 32:
        return _v(ctx, row.reg, "base", "bits 63:32 are not 0")
    return None


def k_v86_limit(ctx: Context, row: Row) -> CheckResult:
    if _seg(ctx, row.reg, "limit") != 0xFFFF:
        return _v(ctx, row.reg, "limit", "must be 0xFFFF in a virtual-8086 guest")
    return None


def k_v86_ar(ctx: Context, row: Row) -> CheckResult:
    if _seg(ctx, row.reg, "ar") != 0xF3:
        return _v(ctx, row.reg, "ar", "must be exactly 0xF3 in a virtual-8086 guest")
    return None


def k_cs_type(ctx: Context, row: Row) -> CheckResult:
    t = _type(_seg(ctx, row.reg, "ar"))
    urg = unrestricted(ctx)
    allowed = (3, 9, 11, 13, 15) if urg else (9, 11, 13, 15)
    if t not in allowed:
        extra = "" if urg else "; type 3 needs \"unrestricted guest\""
        return _v(ctx, row.reg, "ar", f"type {t} is not one of {', '.join(map(str, allowed))}{extra}")
    return None


def k_type_in(ctx: Context, row: Row) -> CheckResult:
    t = _type(_seg(ctx, row.reg, "ar"))
    if t not in row.values:
        want = str(row.values[0]) if len(row.values) == 1 else "one of " + ", ".join(map(str, row.values))
        return _v(ctx, row.reg, "ar", f"type {t} is not {want}")
    return None


def k_type_accessed(ctx: Context, row: Row) -> CheckResult:
    if not _seg(ctx, row.reg, "ar") & 1:
        return _v(ctx, row.reg, "ar", "type bit 0 (accessed) is 0")
    return None


def k_type_code_readable(ctx: Context, row: Row) -> CheckResult:
    t = _type(_seg(ctx, row.reg, "ar"))
    if t & TYPE_CODE and not t & TYPE_READABLE:
        return _v(ctx, row.reg, "ar", f"type {t} is an execute-only code segment (bit 1, readable, is 0)")
    return None


def k_s_bit(ctx: Context, row: Row) -> CheckResult:
    s = AR_S(_seg(ctx, row.reg, "ar"))
    if s != row.values[0]:
        return _v(ctx, row.reg, "ar", f"S (bit 4) is {s}, must be {row.values[0]}")
    return None


def k_cs_dpl_type3(ctx: Context, row: Row) -> CheckResult:
    ar = _seg(ctx, row.reg, "ar")
    if _type(ar) == 3 and _dpl(ar) != 0:
        return _v(ctx, row.reg, "ar", f"type 3 with DPL {_dpl(ar)} (must be 0)")
    return None


def _ss_ar(ctx: Context) -> int:
    return ctx.vmcs("GUEST_SS_AR_BYTES")


def k_cs_dpl_nonconforming(ctx: Context, row: Row) -> CheckResult:
    ar, ss = _seg(ctx, row.reg, "ar"), _ss_ar(ctx)
    if _type(ar) in (9, 11) and _dpl(ar) != _dpl(ss):
        return Violation(f"{show(ctx, row.reg.ar)}: non-conforming code with DPL {_dpl(ar)}, but "
                         f"{show(ctx, 'GUEST_SS_AR_BYTES')} has DPL {_dpl(ss)}")
    return None


def k_cs_dpl_conforming(ctx: Context, row: Row) -> CheckResult:
    ar, ss = _seg(ctx, row.reg, "ar"), _ss_ar(ctx)
    if _type(ar) in (13, 15) and _dpl(ar) > _dpl(ss):
        return Violation(f"{show(ctx, row.reg.ar)}: conforming code with DPL {_dpl(ar)} above "
                         f"{show(ctx, 'GUEST_SS_AR_BYTES')} DPL {_dpl(ss)}")
    return None


def k_ss_dpl_eq_rpl(ctx: Context, row: Row) -> CheckResult:
    if unrestricted(ctx):
        return SKIP
    ar, sel = _seg(ctx, row.reg, "ar"), _seg(ctx, row.reg, "selector")
    if _dpl(ar) != SEL_RPL(sel):
        return Violation(f"{show(ctx, row.reg.ar)} has DPL {_dpl(ar)} but {show(ctx, row.reg.selector)} has "
                         f"RPL {SEL_RPL(sel)} (\"unrestricted guest\" is not in effect)")
    return None


def k_ss_dpl_zero(ctx: Context, row: Row) -> CheckResult:
    cs_type = _type(ctx.vmcs("GUEST_CS_AR_BYTES"))
    real = not ctx.vmcs("GUEST_CR0") & 1
    if cs_type != 3 and not real:
        return None
    dpl = _dpl(_seg(ctx, row.reg, "ar"))
    if dpl != 0:
        why = "GUEST_CR0.PE = 0" if real else "the CS type is 3"
        return _v(ctx, row.reg, "ar", f"DPL {dpl}, but {why} requires SS.DPL = 0")
    return None


def k_dpl_ge_rpl(ctx: Context, row: Row) -> CheckResult:
    if unrestricted(ctx):
        return SKIP
    ar, sel = _seg(ctx, row.reg, "ar"), _seg(ctx, row.reg, "selector")
    if _type(ar) <= 11 and _dpl(ar) < SEL_RPL(sel):
        return Violation(f"{show(ctx, row.reg.ar)} has DPL {_dpl(ar)} below the RPL {SEL_RPL(sel)} of "
                         f"{show(ctx, row.reg.selector)}")
    return None


def k_present(ctx: Context, row: Row) -> CheckResult:
    if not _seg(ctx, row.reg, "ar") & AR_P:
        return _v(ctx, row.reg, "ar", "P (bit 7) is 0")
    return None


def k_ar_rsvd_11_8(ctx: Context, row: Row) -> CheckResult:
    if _seg(ctx, row.reg, "ar") & AR_RSVD_11_8:
        return _v(ctx, row.reg, "ar", "reserved bits 11:8 are not 0")
    return None


def k_cs_db_with_l(ctx: Context, row: Row) -> CheckResult:
    if not ia32e_guest(ctx):
        return SKIP
    ar = _seg(ctx, row.reg, "ar")
    if ar & AR_L and ar & AR_DB:
        return _v(ctx, row.reg, "ar", "L (bit 13) and D/B (bit 14) are both 1 in an IA-32e mode guest")
    return None


def granularity_problem(limit: int, ar: int) -> Optional[str]:
    """Why G (AR bit 15) disagrees with `limit`, or None (Vol.3C 27.3.1.2)."""
    g = AR_G(ar)
    if limit & 0xFFF != 0xFFF and g:
        return "G = 1 but limit bits 11:0 are not all 1"
    if limit & 0xFFF00000 and not g:
        return "G = 0 but limit bits 31:20 are not all 0"
    return None


def k_g_limit(ctx: Context, row: Row) -> CheckResult:
    limit, ar = _seg(ctx, row.reg, "limit"), _seg(ctx, row.reg, "ar")
    why = granularity_problem(limit, ar)
    if why:
        return Violation(f"{show(ctx, row.reg.limit)} and {show(ctx, row.reg.ar)}: {why}")
    return None


def k_ar_rsvd_31_17(ctx: Context, row: Row) -> CheckResult:
    if _seg(ctx, row.reg, "ar") & AR_RSVD_31_17:
        return _v(ctx, row.reg, "ar", "reserved bits 31:17 are not 0")
    return None


def k_tr_type(ctx: Context, row: Row) -> CheckResult:
    t = _type(_seg(ctx, row.reg, "ar"))
    allowed = (11,) if ia32e_guest(ctx) else (3, 11)
    if t not in allowed:
        mode = "an IA-32e mode guest" if ia32e_guest(ctx) else "a guest outside IA-32e mode"
        return _v(ctx, row.reg, "ar", f"type {t}; {mode} needs {' or '.join(map(str, allowed))} (busy TSS)")
    return None


def k_usable(ctx: Context, row: Row) -> CheckResult:
    if _seg(ctx, row.reg, "ar") & UNUSABLE:
        return _v(ctx, row.reg, "ar", "the unusable bit (16) is 1")
    return None


KINDS: Dict[str, Callable[[Context, Row], CheckResult]] = {
    name[2:]: fn for name, fn in list(globals().items()) if name.startswith("k_") and callable(fn)}


def check_row(ctx: Context, row: Row) -> CheckResult:
    """The check of one table row, with its applicability conditions."""
    if row.when != "always" and v86_guest(ctx) != (row.when == "v86"):
        return SKIP
    if row.usable_only and _seg(ctx, row.reg, "ar") & UNUSABLE:
        return SKIP
    return KINDS[row.kind.name](ctx, row)


# ------------------------------------------------------------------ the table

def _patch(f: _File, raw: Any, key: str, reg: Register) -> Dict[str, Any]:
    if not isinstance(raw, dict):
        raise f.fail(key, "expected a mapping (a patch)")
    out: Dict[str, Any] = {}
    for k, v in raw.items():
        if k in _PLACEHOLDERS:
            out[f"vmcs/{reg.encoding(_PLACEHOLDERS[k]):#06x}"] = v
        elif isinstance(k, str) and "/" in k:
            out[k] = v
        else:
            raise f.fail(f"{key}.{k}", "expected SEL, BASE, LIMIT, AR or a patch path")
    return out


def load_table(directory: Optional[str] = None) -> Table:
    """Read and validate structs/guest_segments.yaml; DefinitionError names the file and key."""
    from pathlib import Path
    d = default_directory() if directory is None else Path(directory)
    f = _File(d, FILE, f"structs/{FILE}" if directory is None else str(d / FILE))
    registers: Dict[str, Register] = {}
    raw_regs = f.load("registers")
    if not isinstance(raw_regs, dict):
        raise f.fail("registers", "expected a mapping")
    for name, body in raw_regs.items():
        key = f"registers.{name}"
        f.mapping(body, key, ("selector", "base", "limit", "ar"), ("selector", "base", "limit", "ar"))
        for part, fname in body.items():
            try:
                defs.vmcs_field(fname)
            except Exception:
                raise f.fail(f"{key}.{part}", f"{fname!r} is not a field of structs/vmcs_fields.yaml") from None
        registers[name] = Register(name, **body)
    kinds: Dict[str, Kind] = {}
    raw_kinds = f.load("kinds")
    if not isinstance(raw_kinds, dict):
        raise f.fail("kinds", "expected a mapping")
    texts = ("item", "title", "checks", "broken", "fix")
    for name, body in raw_kinds.items():
        key = f"kinds.{name}"
        if name not in KINDS:
            raise f.fail(key, f"no such check kind (known: {', '.join(sorted(KINDS))})")
        f.mapping(body, key, ("when",) + texts, ("when",) + texts)
        if body["when"] not in WHENS:
            raise f.fail(f"{key}.when", f"expected one of {', '.join(WHENS)}")
        kinds[name] = Kind(name, body["when"], *(f.text(body[t], f"{key}.{t}") for t in texts))
    rows: List[Row] = []
    seen_ids: Dict[str, str] = {}
    raw_rows = f.load("rules")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise f.fail("rules", "expected a non-empty list")
    for i, body in enumerate(raw_rows):
        key = f"rules[{i}]"
        f.mapping(body, key, ("id", "catalog", "reg", "kind", "when", "usable_only", "values", "bad", "good",
                              "baseline"), ("id", "catalog", "reg", "kind", "usable_only", "bad", "good"))
        rid = f.text(body["id"], f"{key}.id", _ID, "an id like GUEST201")
        if rid in seen_ids:
            raise f.fail(f"{key}.id", f"duplicate id (also {seen_ids[rid]})")
        seen_ids[rid] = key
        if body["reg"] not in registers:
            raise f.fail(f"{key}.reg", f"expected one of {', '.join(registers)}")
        if body["kind"] not in kinds:
            raise f.fail(f"{key}.kind", f"expected one of {', '.join(kinds)}")
        kind, reg = kinds[body["kind"]], registers[body["reg"]]
        when = body.get("when", kind.when)
        if when not in WHENS:
            raise f.fail(f"{key}.when", f"expected one of {', '.join(WHENS)}")
        if not isinstance(body["usable_only"], bool):
            raise f.fail(f"{key}.usable_only", "expected true or false")
        values = body.get("values", [])
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise f.fail(f"{key}.values", "expected a list of integers")
        if body["kind"] in ("type_in", "s_bit") and not values:
            raise f.fail(f"{key}.values", f"kind {body['kind']} needs values")
        rows.append(Row(rid, f.text(body["catalog"], f"{key}.catalog"), reg, kind, when, body["usable_only"],
                        tuple(values), _patch(f, body["bad"], f"{key}.bad", reg),
                        _patch(f, body["good"], f"{key}.good", reg),
                        f.text(body.get("baseline", "vmentry"), f"{key}.baseline")))
    return Table(registers, kinds, tuple(rows))


@functools.lru_cache(maxsize=1)
def table() -> Table:
    return load_table()


def _condition(row: Row) -> str:
    parts = []
    if row.when == "v86":
        parts.append("only for a virtual-8086 guest (GUEST_RFLAGS.VM = 1)")
    elif row.when == "not_v86":
        parts.append("unless the guest will be virtual-8086")
    parts.append(f"only when {row.reg.name.upper()} is usable (access-rights bit 16 = 0)" if row.usable_only
                 else f"whether or not {row.reg.name.upper()} is usable")
    return "; ".join(parts)


def _fill(text: str, row: Row) -> str:
    return text.replace("{SEG}", row.reg.name.upper()).replace("{VALUES}", " or ".join(map(str, row.values)))


def _register(row: Row) -> None:
    seg = row.reg.name.upper()
    fields = ", ".join(field_label(getattr(row.reg, p)) for p in ("selector", "base", "limit", "ar"))

    @rule(id=row.id, defined_in=f"structs/{FILE}, rows, id {row.id}", slug=f"guest-{row.reg.name}-{row.kind.name.replace('_', '-')}", title=_fill(row.kind.title, row),
          sdm=f"{SDM}, {row.kind.item}", instructions=ENTRY, tier=Tier.GUEST, outcome=OUTCOME,
          catalog=(row.catalog,),
          checks=f"{_fill(row.kind.checks, row)} Applies {_condition(row)}. Fields: {fields}.",
          broken=_fill(row.kind.broken, row), fix=_fill(row.kind.fix, row),
          examples=[bad(row.bad, baseline=row.baseline), good(row.good, baseline=row.baseline)])
    def check(ctx: Context) -> CheckResult:
        return check_row(ctx, row)

    check.__name__ = f"segment_{row.id.lower()}_{seg.lower()}"


for _row in table().rows:
    _register(_row)


__all__ = ["Register", "Kind", "Row", "Table", "KINDS", "check_row", "granularity_problem", "load_table", "table"]
