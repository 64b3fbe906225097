"""structs/vmentry_checks.yaml, loaded and validated, and example patches on the vmentry baseline.

The table drives the repetitive checks of Vol.3C 27.2 (SDM 325462-080US,
2023): allowed settings of each control field, control addresses, control
dependencies, host canonical bases and host selectors. A malformed row is a
DefinitionError naming the file and the row's key.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from ..common.errors import DefinitionError
from .vmcsctl import ACTIVATED_BY, bit, control_def, encoding, qualified

FILE = "vmentry_checks.yaml"
_ID = re.compile(r"^(CTL|HOST)[0-9]{3}$")
_SECTIONS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    # section: (required keys, optional keys)
    "allowed_settings": (("id", "control", "sdm", "catalog", "bad", "good"), ()),
    "control_addresses": (("id", "field", "guard", "align", "catalog"), ("sdm",)),
    "control_dependencies": (("id", "if", "then", "must", "catalog"), ("sdm",)),
    "host_canonical": (("id", "field", "sdm", "catalog"), ("guard",)),
    "host_selectors": (("id", "field", "catalog"), ()),
}


def table_row(section: str, row: Dict[str, Any]) -> str:
    """Where a rule made from a row of this table is defined (for its documentation)."""
    return f"structs/{FILE}, {section}, id {row['id']}"


def _path() -> Path:
    from ..decode.loader import default_directory
    return default_directory() / FILE


def _check_row(section: str, i: int, row: Any, where: str) -> Dict[str, Any]:
    key = f"{section}[{i}]"
    if not isinstance(row, dict):
        raise DefinitionError("expected a mapping", source=where, key=key)
    required, optional = _SECTIONS[section]
    for k in required:
        if k not in row:
            raise DefinitionError(f"missing key {k!r}", source=where, key=key)
    for k in row:
        if k not in required and k not in optional:
            raise DefinitionError(f"unknown key {k!r}", source=where, key=key)
    if not _ID.match(str(row["id"])):
        raise DefinitionError(f"id {row['id']!r} must look like CTL001 or HOST001", source=where, key=key)
    try:
        if "control" in row:
            control_def(row["control"])
        for k in ("guard", "if", "then"):
            if k in row:
                c, n = qualified(row[k])
                bit(c, n)
        if "field" in row:
            encoding(row["field"])
    except Exception as exc:  # an unknown control, bit or field name
        raise DefinitionError(str(exc), source=where, key=f"{key} ({row['id']})") from None
    if "align" in row and (not isinstance(row["align"], int) or row["align"] & (row["align"] - 1)):
        raise DefinitionError("align must be a power of two", source=where, key=key)
    if "must" in row and row["must"] not in (0, 1):
        raise DefinitionError("must is 0 or 1", source=where, key=key)
    return row


@functools.lru_cache(maxsize=1)
def table() -> Dict[str, List[Dict[str, Any]]]:
    """Every section of the table, validated (ids unique across sections)."""
    path = _path()
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DefinitionError(f"cannot read: {exc}", source=where) from None
    if not isinstance(raw, dict):
        raise DefinitionError("expected a mapping of sections", source=where)
    out: Dict[str, List[Dict[str, Any]]] = {}
    seen: Dict[str, str] = {}
    for section in _SECTIONS:
        rows = raw.get(section)
        if not isinstance(rows, list):
            raise DefinitionError("missing or not a list", source=where, key=section)
        out[section] = [_check_row(section, i, r, where) for i, r in enumerate(rows)]
        for r in out[section]:
            if r["id"] in seen:
                raise DefinitionError(f"duplicate id {r['id']} (also in {seen[r['id']]})", source=where, key=section)
            seen[r["id"]] = section
    for section in raw:
        if section not in _SECTIONS:
            raise DefinitionError("unknown section", source=where, key=str(section))
    return out


# ------------------------------------------------------------ example patches

BASELINE = "vmentry"


@functools.lru_cache(maxsize=1)
def baseline_vmcs() -> Dict[int, int]:
    from .examples import baseline_tree
    raw = baseline_tree(BASELINE)["processors"]["0"]["vmcs"]
    return {int(k, 16): int(v, 16) for k, v in raw.items()}


def controls_patch(*changes: Tuple[str, int]) -> Dict[str, str]:
    """A patch on the vmentry baseline that sets each control ("secondary.enable_ept", 1 or 0);
    a control set to 1 also gets its activation chain ("activate secondary controls" ...)."""
    vals: Dict[int, int] = {}
    base = baseline_vmcs()

    def put(control: str, name: str, one: int) -> None:
        enc = control_def(control).vmcs
        cur = vals.get(enc, base.get(enc, 0))
        b = 1 << bit(control, name)
        vals[enc] = cur | b if one else cur & ~b
        if one and control in ACTIVATED_BY:
            put(*ACTIVATED_BY[control], 1)

    for spec, one in changes:
        put(*qualified(spec), one)
    return {f"vmcs/0x{enc:04x}": hex(v) for enc, v in vals.items()}


def field_patch(field: str, value: int) -> Dict[str, str]:
    return {f"vmcs/0x{encoding(field):04x}": hex(value)}


__all__ = ["table", "table_row", "baseline_vmcs", "controls_patch", "field_patch", "BASELINE"]
