"""The random mutation generator of the Bochs differential run (tests/fixtures/mutations.py):
deterministic per (seed, index), 1-3 changes, weighted toward the rules' edges."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import mutations  # noqa: E402
from vmxdbg.rules.examples import baseline_tree  # noqa: E402

# Bochs 2.7 corei7_skylake_x's VMX capability MSRs (read by RDMSR in a differential run)
CAPS = {0x480: 0xD810000000002B, 0x481: 0x7F00000016, 0x482: 0xF7F9FFFE0401E172, 0x483: 0x7FFFFF00036DFF,
        0x484: 0xFFFF000011FF, 0x485: 0x600401E0, 0x486: 0x80000021, 0x487: 0xFFFFFFFF, 0x488: 0x2000,
        0x489: 0x3727FF, 0x48A: 0x34, 0x48B: 0x2177FFF00000000, 0x48C: 0xF0106334141, 0x48D: 0x7F00000016,
        0x48E: 0xF7F9FFFE04006172, 0x48F: 0x7FFFFF00036DFB, 0x490: 0xFFFF000011FB, 0x491: 0x1}
FIELDS = {int(k, 16): int(v, 16) for k, v in baseline_tree("vmentry")["processors"]["0"]["vmcs"].items()}


def ctx(mode: str) -> mutations.Context:
    return mutations.Context(mode=mode, fields=FIELDS, caps=CAPS, scratch=0x108000, vmcs_ptr=0x101000,
                             vmxon_ptr=0x100000, pd_phys=0x12000, msrs={0x277: 0x7040600070406}, maxphyaddr=40)


def test_a_mutation_depends_only_on_seed_and_index() -> None:
    a = [mutations.generate(7, i, ctx(mutations.mode_of(7, i))) for i in range(300)]
    b = [mutations.generate(7, i, ctx(mutations.mode_of(7, i))) for i in reversed(range(300))][::-1]
    assert [(m.fields, m.memory, m.labels) for m in a] == [(m.fields, m.memory, m.labels) for m in b]
    other = [mutations.generate(8, i, ctx(mutations.mode_of(8, i))) for i in range(300)]
    assert [m.fields for m in a] != [m.fields for m in other]
    assert Counter(mutations.mode_of(7, i) for i in range(2000))["64"] > 900     # 55 % start 64-bit


def test_mutations_sit_on_the_edges_of_the_rules() -> None:
    ms = [mutations.generate(11, i, ctx("64")) for i in range(3000)]
    labels = [label for m in ms for label in m.labels]
    text = "\n".join(labels)
    assert all(1 <= len({k for k in m.fields}) for m in ms)
    # a control bit just outside and just inside the allowed settings
    assert "(must be 1)" in text and "(must be 0)" in text and "(may be 1)" in text and "(may be 0)" in text
    # canonical and not, on both sides of the hole
    values = {v for m in ms for v in m.fields.values()}
    assert {0x0000800000000000, 0x00007FFFFFFFFFFF, 0xFFFF800000000000, 0xFFFF7FFFFFFFFFFF} <= values
    # a limit against its granularity: the largest byte-granular limit and the one above it
    assert {0xFFFFF, 0x100000} <= values
    # the MSR-load list: a bad index, bits 63:32, misaligned or out-of-range addresses, count limits
    assert "index 0x808" in text and "bits 63:32 set" in text and "(misaligned)" in text and "(count)" in text
    # every family of change, and the other guest modes from the 64-bit one
    for word in ("EPTP", "VMCS link pointer", "PDPTE", "activity state", "interruptibility", "inject type",
                 "pending debug", "RFLAGS", "selector", "access rights", "GDTR", "host", "pae:"):
        assert word in text, word


def test_a_mutation_changes_one_to_three_things() -> None:
    counts = Counter(len(mutations.generate(3, i, ctx(mutations.mode_of(3, i))).operators) for i in range(600))
    assert set(counts) == {1, 2, 3} and counts[1] > counts[2] > counts[3]
    for i in range(200):
        m = mutations.generate(4, i, ctx("real"))
        assert m.fields and m.labels and all(0 <= v < 1 << 64 for v in m.fields.values())
