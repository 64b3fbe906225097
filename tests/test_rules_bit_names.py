"""Rules read register fields by their structs/registers.yaml names, never by bit position (issue 19).

The scan walks every module of vmxdbg/rules and flags the shapes a field read by
number takes: `value >> 8 & 7`, `value & (1 << 13)`, `value & 4` (one bit) and a
bare `1 << 31` (a bit constant). Rule decorators are skipped: their examples are
data, not reads. Anything else that must stay a number is listed in ALLOWED with
the reason.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Tuple

import pytest

from vmxdbg.common.errors import InputError
from vmxdbg.decode import defs
from vmxdbg.rules.bits import field, reg_bit, reg_field, reg_reserved

RULES = Path(__file__).resolve().parent.parent / "vmxdbg" / "rules"

# (path below vmxdbg/rules, source text) -> why it is not a register field read by number
ALLOWED = {
    ("controls.py", "1 << 45"): "example data: the bad address (bit 45 set) an address-width rule's example writes",
}


def _int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _shape(node: ast.BinOp) -> str:
    """Why `node` reads a bit field by number, or ""."""
    if isinstance(node.op, ast.BitAnd):
        for a, b in ((node.left, node.right), (node.right, node.left)):
            if isinstance(a, ast.BinOp) and isinstance(a.op, ast.RShift) and _int(a.right) and _int(b):
                return "shift and mask by number"
            if (isinstance(b, ast.BinOp) and isinstance(b.op, ast.LShift) and _int(b.left) and b.left.value == 1
                    and _int(b.right)):
                return "test of a bit by number"
            if _int(b) and b.value > 1 and not b.value & (b.value - 1):
                return "test of a single bit by its value"
    if (isinstance(node.op, ast.LShift) and _int(node.left) and node.left.value == 1 and _int(node.right)
            and node.right.value < 64):
        return "bit constant by number"
    return ""


def scan(source: str) -> List[Tuple[int, str, str]]:
    """(line, source text, why) for every bit-field read by number in `source`."""
    tree = ast.parse(source)
    in_decorator = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for d in f.decorator_list for n in ast.walk(d)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and id(node) not in in_decorator:
            why = _shape(node)
            if why:
                found.append((node.lineno, ast.get_source_segment(source, node) or "", why))
    return found


def _all_hits() -> List[Tuple[str, int, str, str]]:
    hits = []
    for path in sorted(RULES.rglob("*.py")):
        rel = path.relative_to(RULES).as_posix()
        for line, text, why in scan(path.read_text(encoding="utf-8")):
            hits.append((rel, line, text, why))
    return hits


def test_no_rule_module_reads_a_bit_field_by_number() -> None:
    offending = [f"vmxdbg/rules/{rel}:{line}: {text!r} ({why}); name the field in structs/registers.yaml and "
                 "read it with vmxdbg.rules.bits.reg_field/reg_bit"
                 for rel, line, text, why in _all_hits() if (rel, text) not in ALLOWED]
    assert not offending, "\n".join(offending)


def test_allow_list_has_no_stale_entries() -> None:
    seen = {(rel, text) for rel, _, text, _ in _all_hits()}
    assert set(ALLOWED) <= seen, sorted(set(ALLOWED) - seen)


@pytest.mark.parametrize("source", [
    "def f(cap):\n    return cap >> 21 & 1\n",
    "def f(info):\n    return (info >> 8) & 7\n",
    "def f(ar):\n    return ar & (1 << 13)\n",
    "def f(fc):\n    return fc & 4\n",
    "CR0_PG = 1 << 31\n",
])
def test_scan_flags_each_shape(source: str) -> None:
    assert scan(source), source


@pytest.mark.parametrize("source", [
    "def f(ptr):\n    return ptr & 0xFFF\n",              # alignment, not a field
    "MASK = (1 << 64) - 1\n",                            # the 64-bit mask
    "def f(v):\n    return INFO_TYPE(v)\n",
    "@rule(examples=[1 << 40])\ndef f(v):\n    return v\n",  # example data in a decorator
])
def test_scan_passes_named_reads_and_arithmetic(source: str) -> None:
    assert not scan(source), source


def test_reg_field_matches_the_structs_definition() -> None:
    basic = 0x00DA040000000004 | 1 << 56
    for name in ("revision_id", "region_size", "memory_type", "true_controls", "no_error_code_check"):
        want = defs.register("IA32_VMX_BASIC").get(basic, name)
        assert reg_field("IA32_VMX_BASIC", name)(basic) == want
        assert field(basic, "IA32_VMX_BASIC", name) == want
    assert reg_field("IA32_VMX_BASIC", "true_controls")(basic) == 1
    assert reg_field("INTERRUPTION_INFO", "type")(0x80000B0E) == 3
    assert reg_field("EPTP", "walk_length")(0x1A2B501E) == 3
    assert reg_field("IA32_VMX_MISC", "max_msr_list").bits == "27:25"


def test_reg_bit_and_reserved_masks() -> None:
    assert reg_bit("CR0", "pg") == 0x80000000
    assert reg_bit("CR4", "fred") == 1 << 32
    assert reg_reserved("PENDING_DEBUG_EXCEPTIONS") == 0xFFFFFFFFFFFEAFF0   # 11:4, 13, 15, 63:17
    assert reg_reserved("PAE_PDPTE") == 0x1E6                               # 2:1 and 8:5
    assert reg_reserved("IA32_FRED_CONFIG") == 0x834                        # 2, 5:4, 11
    assert reg_reserved("IA32_S_CET") == 0x3C0                              # 9:6
    with pytest.raises(ValueError):
        reg_bit("INTERRUPTION_INFO", "type")          # three bits, not one


def test_unknown_names_are_input_errors() -> None:
    with pytest.raises(InputError, match="no field"):
        reg_field("IA32_VMX_BASIC", "no_such_field")
    with pytest.raises(InputError, match="unknown register"):
        reg_field("NO_SUCH_REGISTER", "x")
